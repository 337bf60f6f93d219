import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { UserError } from '../../shared/util/errors.js';
import type { LabelTable } from './label-csv.js';

const IMAGE_EXT = /\.(png|jpe?g)$/i;

/** Every image file under `root` (recursively), keyed by file name and by file name without extension. */
async function indexImages(root: string): Promise<{ byName: Map<string, string[]>; byStem: Map<string, string[]> }> {
  const byName = new Map<string, string[]>();
  const byStem = new Map<string, string[]>();
  const add = (m: Map<string, string[]>, k: string, v: string) => {
    const l = m.get(k);
    if (l) l.push(v);
    else m.set(k, [v]);
  };
  const walk = async (dir: string): Promise<void> => {
    const entries = await fsp.readdir(dir, { withFileTypes: true });
    for (const e of entries) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) await walk(p);
      else if ((e.isFile() || e.isSymbolicLink()) && IMAGE_EXT.test(e.name)) {
        add(byName, e.name, p);
        add(byStem, e.name.replace(IMAGE_EXT, ''), p);
      }
    }
  };
  await walk(root);
  return { byName, byStem };
}

/**
 * The image file of every row, in row order. NIH rows (and MIMIC dicom ids) are found by file
 * name anywhere under `root`; CheXpert `Path`s are tried as `root/Path`, then without their first
 * folder (so `root` may be the folder that holds CheXpert-v1.0-small or that folder itself).
 * Refuses a missing image, and a name that matches two files, naming the CSV line.
 */
export async function locateImages(table: LabelTable, root: string): Promise<string[]> {
  const st = await fsp.stat(root).catch(() => null);
  if (!st?.isDirectory()) throw new UserError(`--images ${root}: no such directory`);
  if (table.refKind === 'path') {
    const out = new Array<string>(table.rows.length);
    const exists = (p: string) =>
      fsp.access(p).then(
        () => true,
        () => false,
      );
    let next = 0;
    const worker = async () => {
      while (next < table.rows.length) {
        const i = next++;
        const r = table.rows[i]!;
        const direct = path.join(root, r.ref);
        const stripped = path.join(root, r.ref.replace(/^[^/]+\//, ''));
        if (await exists(direct)) out[i] = direct;
        else if (await exists(stripped)) out[i] = stripped;
        else throw new UserError(`${table.file}:${r.line}: image '${r.ref}' not found (looked for ${direct} and ${stripped})`);
      }
    };
    await Promise.all(Array.from({ length: 32 }, worker));
    return out;
  }
  const index = await indexImages(root);
  const map = table.refKind === 'name' ? index.byName : index.byStem;
  return table.rows.map((r) => {
    const hits = map.get(r.ref);
    if (!hits) throw new UserError(`${table.file}:${r.line}: image '${r.ref}' not found under ${root}`);
    if (hits.length > 1)
      throw new UserError(
        `${table.file}:${r.line}: image '${r.ref}' matches ${hits.length} files under ${root}: ${hits.slice(0, 3).join(', ')}`,
      );
    // MIMIC-CXR keeps files/pXX/p<subject_id>/s<study_id>/: the folder must agree with the row.
    const folder = table.refKind === 'stem' ? /(?:^|\/)p(\d+)\/s(\d+)\/[^/]+$/.exec(hits[0]!) : null;
    if (folder && `${folder[1]}/${folder[2]}` !== r.studyId)
      throw new UserError(
        `${table.file}:${r.line}: subject_id/study_id ${r.studyId}, but image ${hits[0]} is in the folder of patient ${folder[1]}, study ${folder[2]}; correct the row`,
      );
    return hits[0]!;
  });
}
