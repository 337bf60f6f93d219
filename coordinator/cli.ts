import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { commands } from './commands/index.js';
import { errorMessage, isUserError } from '../shared/util/errors.js';
import { configFileMiddleware } from '../shared/config/file.js';

/** The `coordinator` command line: parse, dispatch, and turn errors into one clear line and an exit code. */
async function main(argv: string[]): Promise<void> {
  const cli = yargs(argv)
    .scriptName('coordinator')
    .strict()
    .demandCommand(1, 'name a command, or run `coordinator --help`')
    .recommendCommands()
    .wrap(Math.min(110, process.stdout.columns ?? 110))
    .fail((msg, err) => {
      throw err ?? new UsageError(msg);
    })
    .option('config', { type: 'string', global: true, describe: 'YAML or JSON file of option values; command-line flags override it' })
    .option('debug', { type: 'boolean', global: true, describe: 'print the stack trace of an internal error (workers too)' })
    // Before validation, so options required by a command can come from the file.
    .middleware(configFileMiddleware(argv, commands) as never, true)
    .help()
    .version();
  for (const c of commands) cli.command(c);
  await cli.parseAsync();
}

class UsageError extends Error {}

// Read before parsing: an error in parsing itself must know too. Local workers inherit it.
const debug = process.argv.includes('--debug') || process.env.CXR_DEBUG === '1';
if (debug) process.env.CXR_DEBUG = '1';

// `coordinator data inspect DIR | head` closes stdout early: that is the reader's choice, not a failure.
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(0);
  throw e;
});

main(hideBin(process.argv)).catch((e: unknown) => {
  if (e instanceof UsageError) {
    process.stderr.write(`coordinator: ${e.message}\nRun 'coordinator --help' for usage.\n`);
    process.exitCode = 2;
  } else if (isUserError(e)) {
    process.stderr.write(`coordinator: error: ${e.message}\n`);
    process.exitCode = e.exitCode;
  } else {
    process.stderr.write(
      `coordinator: internal error: ${errorMessage(e)}\n${debug ? `${(e as Error)?.stack ?? ''}\n` : '(run with --debug for the stack trace)\n'}`,
    );
    process.exitCode = 1;
  }
});
