import type { CommandModule } from 'yargs';
import { UserError } from '../../shared/util/errors.js';
import { formatChecks, runDoctor } from '../ops/doctor.js';

interface DoctorArgs {
  runDir: string;
  port: (number | string)[];
  minFreeGib: number;
  json: boolean;
}

/** `coordinator doctor`: what works on this machine, and what to do about what does not. */
export const doctorCommand: CommandModule<object, DoctorArgs> = {
  command: 'doctor',
  describe: 'check this machine: TF.js backends, GPUs, ZeroMQ, Node, free disk and ports, with a hint per problem',
  builder: (y) =>
    y
      .option('run-dir', { type: 'string', default: 'runs', describe: 'where runs will be written (free space is checked there)' })
      .option('port', { type: 'array', default: [], describe: 'ports the job will listen on (checked to be free)' })
      .option('min-free-gib', { type: 'number', default: 2, describe: 'fail when the run directory has less free space (GiB)' })
      .option('json', { type: 'boolean', default: false, describe: 'print the checks as JSON' })
      .example('$0 doctor', 'check backends, GPUs, ZeroMQ, Node and disk')
      .example('$0 doctor --run-dir /mnt/runs --port 9464 --port 50051', 'also check the metrics and gRPC ports are free') as never,
  handler: async (argv) => {
    const ports = argv.port.map((p) => {
      const n = Number(p);
      if (!Number.isInteger(n) || n < 1 || n > 65535) throw new UserError(`--port ${p}: not a port number (1-65535)`);
      return n;
    });
    const { checks, usable } = await runDoctor({ runDir: argv.runDir, ports, minFreeGiB: argv.minFreeGib });
    if (argv.json) process.stdout.write(JSON.stringify({ usable, checks }, null, 2) + '\n');
    else process.stdout.write(formatChecks(checks, usable, process.stdout.isTTY === true && !process.env.NO_COLOR));
    if (!usable) process.exitCode = 1;
  },
};
