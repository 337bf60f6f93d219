#!/usr/bin/env node
// Thin launcher: the CLI lives in the compiled TypeScript (built by `npm install` via `prepare`).
import '../dist/coordinator/cli.js';
