import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * Child processes in tests run tracewire from src/ (never a stale dist/): this
 * writes a minimal ESM loader into `dir` that transpiles the project's .ts
 * files with its own TypeScript and resolves bare imports from the repository.
 * Start a child with `execArgv: ['--import', join(dir, 'register.mjs')]`.
 */
export function writeTsLoader(dir: string, rootUrl: string): void {
  writeFileSync(
    join(dir, 'hooks.mjs'),
    `import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
const ROOT_URL = ${JSON.stringify(rootUrl)};
const ts = createRequire(ROOT_URL + 'package.json')('typescript');
export async function resolve(specifier, context, next) {
  if (specifier.endsWith('.js') && context.parentURL?.endsWith('.ts') && /^\\.\\.?\\//.test(specifier)) {
    const url = new URL(specifier, context.parentURL);
    const tsUrl = url.href.slice(0, -3) + '.ts';
    if (!existsSync(fileURLToPath(url)) && existsSync(fileURLToPath(tsUrl))) return { url: tsUrl, format: 'module', shortCircuit: true };
  }
  if (!/^[./]/.test(specifier) && !specifier.includes(':') && !context.parentURL?.startsWith(ROOT_URL)) {
    return next(specifier, { ...context, parentURL: ROOT_URL + 'package.json' });
  }
  return next(specifier, context);
}
export async function load(url, context, next) {
  if (url.startsWith('file:') && url.endsWith('.ts')) {
    const file = fileURLToPath(url);
    const out = ts.transpileModule(readFileSync(file, 'utf8'), { fileName: file, compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 } });
    return { format: 'module', source: out.outputText, shortCircuit: true };
  }
  return next(url, context);
}
`,
  );
  writeFileSync(join(dir, 'register.mjs'), `import { register } from 'node:module';\nregister('./hooks.mjs', import.meta.url);\n`);
}
