export type CollectiveErrorCode = 'timeout' | 'peer-lost' | 'peer-failed' | 'protocol' | 'aborted' | 'closed' | 'broken' | 'handshake';

/** Why a collective failed; `peer` is the rank held responsible, when there is one. */
export class CollectiveError extends Error {
  constructor(
    message: string,
    readonly code: CollectiveErrorCode,
    readonly peer?: number,
  ) {
    super(message);
    this.name = 'CollectiveError';
  }
}
