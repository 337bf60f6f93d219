import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { PROTO_FILE, checkProtoFile, loadControlProto } from '../../proto/control.js';

test('the TypeScript types match proto/control.proto, and a drifted .proto is refused naming the message and field', () => {
  checkProtoFile(PROTO_FILE);
  assert.deepEqual(Object.keys(loadControlProto().service).sort(), [
    'Commands',
    'CommitCheckpoint',
    'Heartbeat',
    'Register',
    'ReportError',
    'ReportStep',
    'VerifyParams',
  ]);
  const dir = mkdtempSync(path.join(tmpdir(), 'cxr-proto-'));
  try {
    const text = readFileSync(PROTO_FILE, 'utf8');
    const drift = (name: string, from: string, to: string) => {
      assert.ok(text.includes(from), from);
      const f = path.join(dir, name);
      writeFileSync(f, text.replace(from, to));
      return () => checkProtoFile(f);
    };
    assert.throws(
      drift('renamed.proto', 'string params_hash = 9;', 'string param_hash = 9;'),
      /message StepReport does not match proto\/control.ts; fields missing from the proto: paramsHash; fields not in the TypeScript types: paramHash/,
    );
    assert.throws(
      drift('added.proto', '  string backend = 7;\n}', '  string backend = 7;\n  string zone = 8;\n}'),
      /message RegisterRequest .*fields not in the TypeScript types: zone/,
    );
    assert.throws(
      drift('stream.proto', 'returns (stream Command)', 'returns (Command)'),
      /rpc Commands is \(CommandsRequest\) -> Command, proto\/control.ts expects \(CommandsRequest\) -> stream Command/,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
