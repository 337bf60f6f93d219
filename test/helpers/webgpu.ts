import { findWebGpuAdapter } from '../../kernels/webgpu.js';

/**
 * Why the WebGPU tests cannot run here, or null when they can: they run on any adapter, the
 * software one (Mesa's llvmpipe, which CI installs) included. Asking Dawn is cheap (no device).
 */
export async function webGpuMissing(): Promise<string | null> {
  const found = await findWebGpuAdapter();
  if (!('error' in found)) return null;
  // CI (.ci/run) installs the software adapter: there a missing adapter is a failure, not a skip.
  if (process.env.CXR_REQUIRE_WEBGPU === '1') throw new Error(`CXR_REQUIRE_WEBGPU=1: ${found.error}`);
  return found.error;
}

/** Relative L2 difference ||a - b|| / ||b||. */
export function relativeDifference(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) throw new Error(`relativeDifference: ${a.length} vs ${b.length} values`);
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i]! - b[i]!) ** 2;
    den += b[i]! ** 2;
  }
  return Math.sqrt(num / (den || 1));
}
