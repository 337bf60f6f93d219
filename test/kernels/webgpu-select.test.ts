import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { adapterInfo, describeAdapter, gpuPciAddresses, noGpuDeviceNode, selectVulkanDevice, vulkanSearch } from '../../kernels/webgpu.js';

test('--gpu on WebGPU: worker i selects the i-th PCI display device through Mesa device select; a bad index is a clear error', () => {
  const root = mkdtempSync(path.join(tmpdir(), 'cxr-pci-'));
  try {
    // Two 3D controllers (0x0302, as data-centre GPUs are), a VGA one (0x0300) and a NIC.
    for (const [dev, cls] of [
      ['0000:c1:00.0', '0x030200'],
      ['0000:41:00.0', '0x030200'],
      ['0000:03:00.0', '0x030000'],
      ['0000:02:00.0', '0x020000'],
    ]) {
      mkdirSync(path.join(root, dev!));
      writeFileSync(path.join(root, dev!, 'class'), `${cls}\n`);
    }
    assert.deepEqual(gpuPciAddresses(root), ['0000:03:00.0', '0000:41:00.0', '0000:c1:00.0']);
    const env: NodeJS.ProcessEnv = { CXR_WEBGPU_DEVICE: '2' };
    assert.match(selectVulkanDevice(env, root)!, /GPU 2 of 3 at PCI 0000:c1:00\.0/);
    assert.equal(env.DRI_PRIME, 'pci-0000_c1_00_0');
    assert.equal(env.MESA_VK_DEVICE_SELECT_FORCE_DEFAULT_DEVICE, '1');
    assert.equal(selectVulkanDevice({}, root), null, 'without --gpu nothing is selected');
    assert.throws(
      () => selectVulkanDevice({ CXR_WEBGPU_DEVICE: '3' }, root),
      /CXR_WEBGPU_DEVICE=3, but this machine has 3 PCI display device/,
    );
    assert.throws(() => selectVulkanDevice({ CXR_WEBGPU_DEVICE: 'x' }, root), /is not a GPU index/);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('adapters: llvmpipe and SwiftShader count as software, a GPU does not; the report names vendor, device, driver', () => {
  const llvmpipe = adapterInfo({
    info: {
      vendor: 'mesa',
      architecture: 'software',
      device: 'llvmpipe-llvm-15',
      description: 'llvmpipe: Mesa 25.0.7',
      isFallbackAdapter: true,
    },
  });
  assert.equal(llvmpipe.software, true);
  assert.equal(adapterInfo({ info: { vendor: 'google', device: 'SwiftShader Device (Subzero)' } }).software, true);
  const h100 = adapterInfo({
    info: { vendor: 'nvidia', architecture: 'hopper', device: 'NVIDIA H100 80GB HBM3', description: 'NVIDIA: 550.54.15' },
  });
  assert.equal(h100.software, false);
  assert.equal(describeAdapter(h100), 'nvidia NVIDIA H100 80GB HBM3 (NVIDIA: 550.54.15; architecture hopper)');
  assert.match(describeAdapter(llvmpipe), /, a software adapter$/);
  assert.deepEqual(vulkanSearch({ VK_DRIVER_FILES: '/x.json', LD_LIBRARY_PATH: '' }).overrides, ['VK_DRIVER_FILES=/x.json']);
});

test("auto asks Dawn only where a GPU device node exists (a render node, or NVIDIA's control node)", () => {
  const dev = mkdtempSync(path.join(tmpdir(), 'cxr-dev-'));
  try {
    assert.equal(noGpuDeviceNode(dev), `no GPU device node (${dev}/dri/renderD*, ${dev}/nvidiactl)`);
    mkdirSync(path.join(dev, 'dri'));
    writeFileSync(path.join(dev, 'dri', 'card0'), '');
    assert.notEqual(noGpuDeviceNode(dev), null, 'a display card without a render node is no compute device');
    writeFileSync(path.join(dev, 'dri', 'renderD128'), '');
    assert.equal(noGpuDeviceNode(dev), null);
    rmSync(path.join(dev, 'dri'), { recursive: true });
    writeFileSync(path.join(dev, 'nvidiactl'), '');
    assert.equal(noGpuDeviceNode(dev), null);
  } finally {
    rmSync(dev, { recursive: true, force: true });
  }
});
