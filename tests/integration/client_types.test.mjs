// www/stoa.d.ts describes www/stoa.js: a usage example (the README's API
// section) type-checks against it with TypeScript's strict mode, and a
// wrong call does not.
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, readFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from './lib/stoa.mjs';

const TESTS = join(dirname(fileURLToPath(import.meta.url)), '..');
const TSC = join(TESTS, 'node_modules', 'typescript', 'bin', 'tsc');

it('the usage example type-checks against www/stoa.d.ts (strict)', async () => {
  const r = await run(process.execPath, [TSC, '-p', join(TESTS, 'types', 'tsconfig.json')], { timeout: 60000 });
  assert.equal(r.code, 0, r.stdout + r.stderr);
});

it('a wrong call is a type error', async () => {
  const dir = mkdtempSync(join(TESTS, 'types', 'tmp-'));
  try {
    const usage = readFileSync(join(TESTS, 'types', 'usage.ts'), 'utf8').replaceAll("'../../www/", "'../../../www/");
    writeFileSync(join(dir, 'usage.ts'), `${usage}\nasync function bad(c: StoaClient) { c.setPresence(42, 'x'); }\n`);
    writeFileSync(join(dir, 'tsconfig.json'), readFileSync(join(TESTS, 'types', 'tsconfig.json')));
    const r = await run(process.execPath, [TSC, '-p', join(dir, 'tsconfig.json')], { timeout: 60000 });
    assert.notEqual(r.code, 0);
    assert.match(r.stdout, /error TS2345/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
