import { UserError } from '../../shared/util/errors.js';
import { loadLabelSet, type LabelSet } from '../../shared/labels.js';
import { columnIndex, readCsv } from '../../shared/dataset/csv.js';

export const FORMATS = ['nih', 'chexpert'] as const;
export type LabelFormat = (typeof FORMATS)[number];

/** One image row of a label CSV. */
export interface LabelRow {
  /** 1-based line in the CSV, for error messages. */
  line: number;
  /** How to find the image: a file name (NIH, MIMIC dicom_id) or a path relative to the image root. */
  ref: string;
  subjectId: string;
  studyId: string;
  labels: Float32Array;
}

export interface LabelTable {
  file: string;
  format: LabelFormat;
  labelSet: LabelSet;
  /** 'name': find `ref` by file name (without extension for dicom ids) anywhere under the root; 'path': root/ref. */
  refKind: 'name' | 'stem' | 'path';
  rows: LabelRow[];
}

const LABEL_VALUES = new Map<string, number>([
  ['1.0', 1],
  ['1', 1],
  ['0.0', 0],
  ['0', 0],
  ['-1.0', -1],
  ['-1', -1],
  ['', NaN],
]);

const NIH_FORMAT_NAMES = ['Image Index', 'Finding Labels', 'Patient ID'] as const;

/**
 * Read a label CSV of the given format into rows with labels in the label set's column order.
 * Refuses, naming file, line and field: an empty file, missing columns, unknown label values or
 * names, missing ids, and the same image twice.
 */
export async function readLabelCsv(file: string, format: LabelFormat): Promise<LabelTable> {
  if (!(FORMATS as readonly string[]).includes(format))
    throw new UserError(`unknown --format '${format}': use one of ${FORMATS.join(', ')}`);
  const labelSet = loadLabelSet(format === 'nih' ? 'nih14' : 'chexpert14');
  const L = labelSet.labels.length;
  const rows: LabelRow[] = [];
  const seen = new Map<string, number>();
  let header: string[] | null = null;
  let parseRow: ((f: string[], line: number) => LabelRow) | null = null;
  let refKind: LabelTable['refKind'] = 'name';

  for await (const records of readCsv(file)) {
    for (const rec of records) {
      if (!header) {
        header = rec.fields.map((h) => h.trim());
        const made = format === 'nih' ? nihRowParser(file, header, labelSet) : chexpertRowParser(file, header, labelSet);
        parseRow = made.parse;
        refKind = made.refKind;
        continue;
      }
      if (rec.fields.length < header.length && !(rec.fields.length === 1 && rec.fields[0]!.trim() === ''))
        throw new UserError(`${file}:${rec.line}: ${rec.fields.length} fields, the header has ${header.length}`);
      const row = parseRow!(rec.fields, rec.line);
      const prev = seen.get(row.ref);
      if (prev !== undefined)
        throw new UserError(`${file}:${row.line}: duplicate image '${row.ref}' (first at line ${prev}); each image must appear once`);
      seen.set(row.ref, row.line);
      if (row.labels.length !== L) throw new Error('label row of the wrong length');
      rows.push(row);
    }
  }
  if (!header)
    throw new UserError(
      `${file}: empty CSV (no header line); expected the ${format === 'nih' ? 'NIH Data_Entry_2017' : 'CheXpert/MIMIC'} label format`,
    );
  if (rows.length === 0) throw new UserError(`${file}: the CSV has a header but no rows`);
  return { file, format, labelSet, refKind, rows };
}

function nihRowParser(
  file: string,
  header: string[],
  set: LabelSet,
): { parse: (f: string[], line: number) => LabelRow; refKind: LabelTable['refKind'] } {
  const col = columnIndex(file, header, NIH_FORMAT_NAMES);
  const iImage = col.get('Image Index')!;
  const iFind = col.get('Finding Labels')!;
  const iPatient = col.get('Patient ID')!;
  const labelIdx = new Map(set.labels.map((l, k) => [l, k]));
  const noFinding = labelIdx.get('No Finding');
  return {
    refKind: 'name',
    parse: (f, line) => {
      const image = (f[iImage] ?? '').trim();
      if (!image) throw new UserError(`${file}:${line}: empty 'Image Index'`);
      const patient = (f[iPatient] ?? '').trim();
      if (!patient) throw new UserError(`${file}:${line}: empty 'Patient ID'`);
      // The split is by patient: a wrong id puts a patient's images in two splits (test AUROC leaks).
      if (!/^\d+$/.test(patient)) throw new UserError(`${file}:${line}: 'Patient ID' '${patient}' is not a number`);
      const named = /^(\d+)_\d+\.[A-Za-z]+$/.exec(image);
      if (!named)
        throw new UserError(
          `${file}:${line}: 'Image Index' '${image}' is not an NIH image name (PATIENT_FOLLOWUP.png, e.g. 00000003_004.png), so its patient cannot be checked`,
        );
      if (Number(named[1]) !== Number(patient))
        throw new UserError(
          `${file}:${line}: 'Patient ID' ${patient} differs from the patient of image ${image} (${Number(named[1])}); correct the row`,
        );
      // NIH labels are all-or-nothing text mining: a finding not listed is a negative, never blank.
      const labels = new Float32Array(set.labels.length);
      const names = (f[iFind] ?? '')
        .split('|')
        .map((s) => s.trim())
        .filter(Boolean);
      if (names.length === 0) throw new UserError(`${file}:${line}: empty 'Finding Labels' (use 'No Finding' for a normal image)`);
      for (const n of names) {
        const k = labelIdx.get(n);
        if (k === undefined)
          throw new UserError(`${file}:${line}: unknown finding '${n}' in 'Finding Labels' (known: ${set.labels.join(', ')})`);
        labels[k] = 1;
      }
      if (noFinding !== undefined && labels[noFinding] === 1 && names.length > 1)
        throw new UserError(`${file}:${line}: 'Finding Labels' has 'No Finding' together with findings: ${names.join('|')}`);
      const padded = /^\d+$/.test(patient) ? patient.padStart(8, '0') : patient;
      return { line, ref: image, subjectId: padded, studyId: image.replace(/\.[^.]+$/, ''), labels };
    },
  };
}

function chexpertRowParser(
  file: string,
  header: string[],
  set: LabelSet,
): { parse: (f: string[], line: number) => LabelRow; refKind: LabelTable['refKind'] } {
  const hasPath = header.includes('Path');
  const idCols = hasPath ? ['Path'] : ['subject_id', 'study_id', 'dicom_id'];
  if (!hasPath && !header.includes('subject_id'))
    throw new UserError(
      `${file}: missing required column 'Path' (CheXpert) or 'subject_id', 'study_id', 'dicom_id' (MIMIC-CXR) (header has: ${header.join(', ')})`,
    );
  const col = columnIndex(file, header, [...idCols, ...set.labels]);
  const labelCols = set.labels.map((l) => col.get(l)!);
  const parseLabels = (f: string[], line: number): Float32Array => {
    const out = new Float32Array(labelCols.length);
    for (let k = 0; k < labelCols.length; k++) {
      const raw = f[labelCols[k]!] ?? '';
      let v = LABEL_VALUES.get(raw);
      if (v === undefined) v = LABEL_VALUES.get(raw.trim());
      if (v === undefined)
        throw new UserError(`${file}:${line}: column '${set.labels[k]}': unknown label value '${raw}' (allowed: 1.0, 0.0, -1.0 or blank)`);
      out[k] = v;
    }
    return out;
  };
  if (hasPath) {
    const iPath = col.get('Path')!;
    // A subject_id column next to Path must name the same patient as the path's folder.
    const iSub = header.indexOf('subject_id');
    return {
      refKind: 'path',
      parse: (f, line) => {
        const p = (f[iPath] ?? '').trim();
        if (!p) throw new UserError(`${file}:${line}: empty 'Path'`);
        const pm = /(?:^|\/)(patient\d+)\//.exec(p);
        if (!pm) throw new UserError(`${file}:${line}: 'Path' ${p} has no patientNNNNN folder to take the patient id from`);
        if (iSub >= 0) {
          const sub = (f[iSub] ?? '').trim();
          if (!/^\d+$/.test(sub) || Number(sub) !== Number(pm[1]!.slice('patient'.length)))
            throw new UserError(`${file}:${line}: 'subject_id' '${sub}' differs from the patient of 'Path' ${p}; correct the row`);
        }
        const sm = /(?:^|\/)(patient\d+\/study\d+)\//.exec(p);
        return { line, ref: p, subjectId: pm[1]!, studyId: sm ? sm[1]! : p.replace(/\/[^/]*$/, ''), labels: parseLabels(f, line) };
      },
    };
  }
  const iSub = col.get('subject_id')!;
  const iStudy = col.get('study_id')!;
  const iDicom = col.get('dicom_id')!;
  return {
    refKind: 'stem',
    parse: (f, line) => {
      const sub = (f[iSub] ?? '').trim();
      const study = (f[iStudy] ?? '').trim();
      const dicom = (f[iDicom] ?? '').trim();
      for (const [name, v] of [
        ['subject_id', sub],
        ['study_id', study],
        ['dicom_id', dicom],
      ] as const)
        if (!v) throw new UserError(`${file}:${line}: empty '${name}'`);
      if (!/^\d+$/.test(sub)) throw new UserError(`${file}:${line}: 'subject_id' '${sub}' is not a number`);
      return { line, ref: dicom, subjectId: sub, studyId: `${sub}/${study}`, labels: parseLabels(f, line) };
    },
  };
}
