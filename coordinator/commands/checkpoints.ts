import * as path from 'node:path';
import { existsSync } from 'node:fs';
import type { CommandModule } from 'yargs';
import { UserError, errorMessage } from '../../shared/util/errors.js';
import { checkpointsDir, listCheckpoints, readManifest } from '../../shared/checkpoint/manifest.js';
import { verifyShards } from '../../shared/checkpoint/load.js';

interface Args {
  run: string;
  verify: boolean;
}

/** `coordinator checkpoints --run DIR [--verify]`: what a run has saved, and whether it is intact. */
export const checkpointsCommand: CommandModule<object, Args> = {
  command: 'checkpoints',
  describe: "a run's checkpoints, committed or interrupted (--verify: check every shard)",
  builder: (y) =>
    y
      .option('run', { type: 'string', demandOption: true, describe: 'the run directory (holding checkpoints/)' })
      .option('verify', { type: 'boolean', default: false, describe: 'read every shard and check every block checksum' })
      .example('$0 checkpoints --run runs/a --verify', 'list the checkpoints of runs/a and check every shard'),
  handler: async (a) => {
    const root = existsSync(checkpointsDir(a.run)) ? checkpointsDir(a.run) : path.resolve(a.run);
    if (!existsSync(root)) throw new UserError(`${path.resolve(a.run)} does not exist`);
    const all = await listCheckpoints(root);
    if (all.length === 0) throw new UserError(`no checkpoints under ${root}`);
    let bad = 0;
    const lines = ['step       state        world  epoch  MB         created'];
    for (const c of all) {
      if (!c.committed) {
        lines.push(`${String(c.step).padEnd(10)} uncommitted  (an interrupted save: never loaded)`);
        continue;
      }
      let state = 'committed';
      let row = '';
      try {
        const m = await readManifest(c.dir);
        const mb = m.shards.reduce((s, x) => s + x.bytes, 0) / 1e6;
        row = `${String(m.world).padEnd(6)} ${String(m.epoch).padEnd(6)} ${mb.toFixed(1).padEnd(10)} ${m.created}`;
        if (a.verify) {
          await verifyShards(c.dir, m);
          state = 'verified';
        }
      } catch (e) {
        bad++;
        state = 'CORRUPT';
        row = errorMessage(e);
      }
      lines.push(`${String(c.step).padEnd(10)} ${state.padEnd(12)} ${row}`);
    }
    process.stdout.write(lines.join('\n') + '\n');
    if (bad) throw new UserError(`${bad} committed checkpoint(s) under ${root} are corrupt (resuming from the run directory skips them)`);
  },
};
