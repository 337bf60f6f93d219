import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadLabelSet, parseLabelSet, labelText } from '../../shared/labels.js';
import { UserError } from '../../shared/util/errors.js';

test('built-in label sets load and are self-consistent', () => {
  const chex = loadLabelSet('chexpert14');
  assert.equal(chex.labels.length, 14);
  assert.deepEqual(chex.competition, ['Atelectasis', 'Cardiomegaly', 'Consolidation', 'Edema', 'Pleural Effusion']);
  const nih = loadLabelSet('nih14');
  assert.equal(nih.labels.length, 15);
  for (const [nihName, chexName] of Object.entries(nih.toChexpert)) {
    assert.ok(nih.labels.includes(nihName));
    if (chexName !== null) assert.ok(chex.labels.includes(chexName), `${nihName} maps to unknown ${chexName}`);
  }
});

test('a label set naming an unknown label in its graph is refused with the field named', () => {
  const doc = { name: 'x', description: '', labels: ['A', 'B'], competition: [], edges: [['A', 'C']], groups: {}, toChexpert: {} };
  assert.throws(
    () => parseLabelSet(doc, 'x.json'),
    (e: unknown) => e instanceof UserError && /'edges' names 'C'/.test(e.message),
  );
  assert.throws(() => loadLabelSet('no-such-set'), /not found/);
});

test('label text for prompts', () => {
  assert.equal(labelText('Pleural_Thickening'), 'Pleural Thickening');
});
