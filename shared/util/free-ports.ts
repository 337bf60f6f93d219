import { createServer, type Server } from 'node:net';

/**
 * `n` distinct TCP ports free on `host` right now, found by binding port 0 and releasing it. All
 * `n` are held until every one is bound, so they differ; another process may still take one
 * before the caller binds it (callers that must not race pass fixed ports).
 */
export async function freePorts(n: number, host = '127.0.0.1'): Promise<number[]> {
  const servers = await Promise.all(
    Array.from(
      { length: n },
      () =>
        new Promise<Server>((resolve, reject) => {
          const s = createServer();
          s.unref();
          s.on('error', reject);
          s.listen(0, host, () => resolve(s));
        }),
    ),
  );
  const ports = servers.map((s) => (s.address() as { port: number }).port);
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  return ports;
}
