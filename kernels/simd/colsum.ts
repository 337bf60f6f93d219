import { addTo, assembleModule, Body, instantiateWith, whileLoop, wasmApi } from '../wasm-asm.js';

/**
 * Column sums of a row-major fp32 matrix, out[j] = sum over i of x[i, j], in WebAssembly SIMD, for
 * tfjs-backend-wasm's Sum over leading axes (a bias's gradient: the sum of dY [rows, width] over
 * its rows). The backend's own Sum only reduces innermost axes, so for these it first transposes
 * the whole matrix (a 4 MB copy for [2080, 512]) and then sums each row of the result.
 *
 * Each column is summed in increasing i, in f32, starting from 0: the order the backend's Sum
 * uses for a transposed row, so the bits are the same. Columns go in blocks of 32 (eight f32x4
 * accumulators, two cache lines of a row) so that one pass down the rows uses every byte it loads;
 * the last 0-3 columns of a row are summed one lane at a time, still in increasing i.
 */

const BLOCK = 32;

/** colsum(x, out, rows, cols): byte offsets x, out; out gets cols floats. */
function colsumBody(): Body {
  const f = new Body(['i32', 'i32', 'i32', 'i32']);
  const [x, out, rows, cols] = [0, 1, 2, 3];
  const j = f.local('i32'); // first column of the block
  const p = f.local('i32');
  const i = f.local('i32');
  const ld = f.local('i32'); // bytes per row
  const q = f.local('i32');
  const acc = Array.from({ length: BLOCK / 4 }, () => f.local('v128'));
  const s = f.local('f32');
  f.get(cols).i32Const(2).i32Shl().set(ld);
  // Full blocks of BLOCK columns, then blocks of 4, then single columns.
  for (const step of [BLOCK, 4] as const) {
    const vecs = step / 4;
    whileLoop(
      f,
      () => f.get(j).i32Const(step).i32Add().get(cols).i32GtU().i32Eqz(),
      () => {
        for (let v = 0; v < vecs; v++) f.v128Zero().set(acc[v]!);
        f.get(x).get(j).i32Const(2).i32Shl().i32Add().set(p);
        f.i32Const(0).set(i);
        whileLoop(
          f,
          () => f.get(i).get(rows).i32LtU(),
          () => {
            for (let v = 0; v < vecs; v++)
              f.get(acc[v]!)
                .get(p)
                .v128Load(16 * v)
                .f32x4Add()
                .set(acc[v]!);
            addTo(f, p, { local: ld });
            addTo(f, i, 1);
          },
        );
        for (let v = 0; v < vecs; v++)
          f.get(out)
            .get(j)
            .i32Const(2)
            .i32Shl()
            .i32Add()
            .get(acc[v]!)
            .v128Store(16 * v);
        addTo(f, j, step);
      },
    );
  }
  whileLoop(
    f,
    () => f.get(j).get(cols).i32LtU(),
    () => {
      f.f32Const0().set(s);
      f.get(x).get(j).i32Const(2).i32Shl().i32Add().set(q);
      f.i32Const(0).set(i);
      whileLoop(
        f,
        () => f.get(i).get(rows).i32LtU(),
        () => {
          f.get(s).get(q).f32Load().f32Add().set(s);
          addTo(f, q, { local: ld });
          addTo(f, i, 1);
        },
      );
      f.get(out).get(j).i32Const(2).i32Shl().i32Add().get(s).f32Store();
      addTo(f, j, 1);
    },
  );
  return f;
}

const MODULE = assembleModule([{ name: 'colsum', body: colsumBody() }]);

/** Whether this engine can run the module (wasm SIMD). */
export const simdColsumSupported = wasmApi?.validate(MODULE) ?? false;

export interface SimdColsum {
  /** out[j] = sum_i x[i*cols + j] for j < cols; byte offsets into the memory it was made for. */
  colsum(x: number, out: number, rows: number, cols: number): void;
}

/**
 * The kernel bound to `memory` (the tfjs wasm backend's heap), or null where it cannot run: no
 * wasm SIMD, or a memory this module cannot import (the threaded backend's shared memory).
 */
export function simdColsum(memory: unknown): SimdColsum | null {
  return instantiateWith(MODULE, memory) as unknown as SimdColsum | null;
}
