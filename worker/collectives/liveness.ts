/**
 * What a rank knows about whether its peers are alive: when each last sent anything (data, a
 * ping, ...) and which connections have dropped, and when. A waiting rank pings its peers, so a
 * peer silent for long is dead, stopped or not in the collective, and a timeout blames it rather
 * than a live neighbour that is merely waiting too.
 */
export class PeerLiveness {
  private readonly lastHeard: number[];
  /** Peers whose connection dropped (and has not come back), with when. */
  private readonly down = new Map<number, number>();

  constructor(
    private readonly rank: number,
    private readonly endpoints: readonly string[],
    private readonly timeoutMs: number,
    now: number,
  ) {
    this.lastHeard = endpoints.map(() => now);
  }

  heard(peer: number, now: number): void {
    this.lastHeard[peer] = now;
  }

  lost(peer: number, at: number): void {
    this.down.set(peer, at);
  }

  connected(peer: number): void {
    this.down.delete(peer);
  }

  /** When the connection to `peer` dropped, if it is down. */
  lostAt(peer: number): number | undefined {
    return this.down.get(peer);
  }

  /** The peer silent the longest, if any has been silent for over half the timeout (`excused`: peers that said goodbye). */
  silentPeer(now: number, excused: ReadonlySet<number>): { rank: number; ms: number } | null {
    let best: { rank: number; ms: number } | null = null;
    this.lastHeard.forEach((at, r) => {
      const ms = now - at;
      if (r !== this.rank && !excused.has(r) && ms > this.timeoutMs / 2 && (!best || ms > best.ms)) best = { rank: r, ms };
    });
    return best;
  }

  /** A disconnected rank is a better suspect than a live neighbour that is merely waiting too. */
  suspect(neighbour: number): number {
    return this.down.has(neighbour) || this.down.size === 0 ? neighbour : [...this.down.keys()][0]!;
  }

  /** The dropped connections, for an error message ('' when none). */
  downNote(now: number): string {
    if (this.down.size === 0) return '';
    return `; connection lost to ${[...this.down].map(([r, at]) => `rank ${r} (${this.endpoints[r]}) ${now - at} ms ago`).join(', ')}`;
  }
}
