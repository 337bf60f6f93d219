import { loadCheckpoint, loadInitWeights } from '../../shared/checkpoint/index.js';
import { shardRange } from '../../shared/shard.js';
import type { Packing } from '../../shared/trainable.js';
import { UserError } from '../../shared/util/errors.js';
import type { Logger } from '../../shared/util/log.js';
import { loadPretrainedParams } from '../../model/pretrained/model.js';
import type { TrainStepConfig } from '../../model/train-config.js';
import { CxrModel, initialParams } from '../../model/vit.js';
import { spansBuffer } from '../collectives/threaded-group.js';
import type { OptimizerState } from './sharded-adamw.js';

/**
 * The model and this rank's optimizer state at the job's first step: fresh from the seed (every
 * rank builds the same; the rendezvous hash check proves it), from the checkpoint the coordinator
 * chose, or from --init-weights. With frozen entries (`packing`) the moments are those of the
 * rank's range of the packed trainable vector.
 */
export async function buildTrainState(
  t: TrainStepConfig,
  o: { rank: number; world: number; seed: number; startStep: number; log: Logger; packing: Packing | null },
): Promise<{ model: CxrModel; state: OptimizerState; fixedPrompts: Float32Array | undefined }> {
  const config = t.run.resolved.model;
  let params: Float32Array = initialParams(config, o.seed);
  const fixedPrompts = t.fixedPrompts ? Float32Array.from(t.fixedPrompts) : undefined;
  const model = new CxrModel(config, params, fixedPrompts);
  const own = shardRange(o.packing?.size ?? model.layout.total, o.world, o.rank);
  let m: Float32Array = new Float32Array(own.end - own.start);
  let v: Float32Array = new Float32Array(own.end - own.start);
  if (t.resume) {
    // Any world size: this rank reads the whole vector and m, v of its new range from the overlapping
    // old shards; entries this run trains that the checkpoint froze (another --freeze) start at zero moments.
    const ck = await loadCheckpoint(t.resume, { layout: model.layout, world: o.world, rank: o.rank, frozen: o.packing?.frozen ?? [] });
    if (ck.step !== o.startStep) throw new Error(`the coordinator resumes at step ${o.startStep} but ${t.resume} holds step ${ck.step}`);
    params = ck.params;
    m = ck.m;
    v = ck.v;
    model.assignFlat(params);
    o.log.info(`resumed from ${ck.dir} (step ${ck.step}, saved by ${ck.manifest.world} worker${ck.manifest.world > 1 ? 's' : ''})`);
  } else if (t.initWeights) {
    const w = await loadInitWeights(t.initWeights, model.layout, params);
    // A frozen entry the file lacks would keep its random start for the whole run.
    const frozen = new Set(o.packing?.frozen ?? []);
    const stuck = w.missing.filter((n) => frozen.has(n));
    if (stuck.length > 0)
      throw new UserError(
        `${t.initWeights}: no tensor for ${stuck.length} frozen parameter${stuck.length > 1 ? 's' : ''} (${stuck.slice(0, 3).join(', ')}${stuck.length > 3 ? ', ...' : ''}), which would stay at their random start: give weights that have them, or do not freeze them`,
      );
    params = w.params;
    model.assignFlat(params);
    if (o.rank === 0)
      o.log.info(
        `initial weights from ${t.initWeights}: ${w.loaded.length} tensors loaded, ${w.missing.length} kept fresh (${w.missing.slice(0, 5).join(', ')}${w.missing.length > 5 ? ', ...' : ''})`,
      );
  } else if (config.pretrained) {
    const w = await loadPretrainedParams(config, params);
    params = w.params;
    model.assignFlat(params);
    if (o.rank === 0)
      o.log.info(
        `pretrained weights from ${config.pretrained.weights}: ${w.loaded.length} tensors loaded, ${w.missing.length} kept fresh, ${w.unused.length} of the file not used`,
      );
  }
  // The parameter all-gather moves `params` to the comm thread and back (no copy): it must own its
  // memory. The model's variables never alias it (assignFlat writes into their own storage).
  if (!spansBuffer(params)) params = params.slice();
  return { model, state: { params, m, v }, fixedPrompts };
}
