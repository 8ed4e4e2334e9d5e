// Types for rebound-client, the Node client of reboundd.
// The wire format is docs/protocol.md of the rebound repository.

import { EventEmitter } from 'node:events';

/** Codes of errors from reboundd (the protocol's) and from the client itself. */
export type ErrorCode =
  | 'bad_request' | 'unknown_op' | 'too_large' | 'not_found' | 'unavailable'
  | 'busy' | 'auth_required' | 'internal'
  // the client's own
  | 'timeout' | 'closed' | 'protocol'
  | (string & {});

/** An error reply of reboundd, or a failure of the client. Program against `code`. */
export class ReboundError extends Error {
  constructor(code: string, message: string, reply?: ErrorReply);
  readonly name: 'ReboundError';
  readonly code: ErrorCode;
  /** The error reply as reboundd sent it (absent for the client's own errors). */
  readonly reply?: ErrorReply;
  static fromReply(reply: ErrorReply): ReboundError;
}

export interface ErrorReply {
  ok: false;
  error: { code: ErrorCode; message: string };
}

export type Action = 'retry' | 'give_up' | 'suppress';
export type Reason = 'hard_invalid' | 'permanent' | 'max_attempts' | 'max_age' | 'chronic_soft' | 'suppressed';
export type EventType = 'retry' | 'give_up' | 'suppress' | 'sender_alert' | 'domain_throttled';

export interface ClientOptions {
  /** The daemon's shared token, sent as `auth` on every new connection. */
  token?: string;
  /** The longest wait to connect, and the longest silence while requests are unanswered (default 10000). */
  timeoutMs?: number;
  /** How long after a call a request may still be sent again; past it the call rejects (default 60000). */
  resendDeadlineMs?: number;
  /** The first back-off before a reconnect or resend (default 50). */
  backoffMinMs?: number;
  /** The longest back-off (default 2000). */
  backoffMaxMs?: number;
  /** The most requests written and unanswered at once (default 1000). */
  window?: number;
  /**
   * With shards, send each request about one recipient straight to its
   * shard's owner, on a connection per owner (default true); false sends
   * everything to `address`, which relays what it does not own.
   */
  route?: boolean;
}

/** What a Client's routing knows now (see `Client.routes`). */
export interface ClientRoutes {
  /** 0 before the first `cluster` answer, 1 without shards. */
  shards: number;
  /** Each shard's owner's address ("" while unknown). */
  map: string[];
  /** The owners with a connection of their own. */
  owners: string[];
}

export interface BounceOptions {
  /** The enhanced status code, e.g. "4.7.1". */
  enhanced?: string | null;
  /** The server's reply text. */
  text?: string | null;
  campaign?: string | null;
  /** Returned as is in this message's events. */
  meta?: Record<string, unknown> | null;
  /** The earliest retry: epoch milliseconds or a Date. */
  notBefore?: number | Date | null;
}

export interface BounceReport extends BounceOptions {
  id: string;
  rcpt: string;
  code: number;
}

export interface BounceReply {
  ok: true;
  id: string;
  class: string;
  action: Action;
  /** For retry: the retry scheduled (1 = the first); otherwise the retries made. */
  attempt: number;
  /** retry only: when the retry falls due, epoch ms. */
  retry_at?: number;
  /** give_up and suppress only. */
  reason?: Reason;
}

export interface DeliveredReply { ok: true; id: string; found: boolean; unsuppressed: boolean }
export interface CancelReply { ok: true; id: string; found: boolean }

export interface RecipientRecord {
  address: string;
  streak: number;
  streak_limit: number;
  soft_bounces: number;
  first_soft_at?: number;
  last_soft_at?: number;
  classes?: string[];
  last_campaign?: string;
  last_message?: string;
  suppressed: boolean;
  suppressed_reason?: 'hard_invalid' | 'chronic_soft';
  suppressed_at?: number;
}

export interface HistoryItem { at: number; code: number; enhanced?: string; class: string }

export interface GetReply {
  ok: true;
  id?: string;
  rcpt: string;
  campaign?: string;
  meta?: Record<string, unknown>;
  state?: 'pending' | 'awaiting';
  class?: string;
  attempt?: number;
  first_at?: number;
  due_at?: number;
  history?: HistoryItem[];
  recipient: RecipientRecord;
}

export interface ClassifyReply {
  ok: true;
  class: string;
  action: Action;
  rule: string | null;
  code: number;
  enhanced?: string;
  alert: boolean;
  counts_streak: boolean;
  stated_wait_ms?: number;
  forecast: Array<{ attempt: number; after_min_ms: number; after_max_ms: number }>;
  give_up_after_ms?: number;
}

export interface StatsReply {
  ok: true;
  pending: number;
  awaiting: number;
  by_class: Record<string, number>;
  due: { minute: number; hour: number; day: number };
  events: Record<EventType, number>;
  reports: number;
  errors: number;
  redis: 'up' | 'down';
  loaded: boolean;
  uptime_s: number;
  connections: number;
  domains?: {
    known: number;
    throttled: Array<{ domain: string; class: string; since: number; until: number; held: number }>;
    top_pending: Array<{ domain: string; pending: number }>;
  };
  [member: string]: unknown;
}

export interface SuppressedReply {
  ok: true;
  cursor: string;
  items: Array<{ rcpt: string; reason: 'hard_invalid' | 'chronic_soft'; at: number }>;
  total: number;
}

export interface UnsuppressReply { ok: true; rcpt: string; found: boolean }

export interface DomainReply {
  ok: true;
  domain: string;
  known: boolean;
  pending?: number;
  throttled?: boolean;
  [member: string]: unknown;
}

/** Any reply; `bounceMany` holds an ErrorReply in the place of a refused report. */
export type Reply = { ok: true; [member: string]: unknown };

export interface ClientCounters {
  /** Request lines written, resends included. */
  sent: number;
  /** Of those, resends. */
  resent: number;
  /** `unavailable` answers parked for a resend. */
  unavailable: number;
  /** Connections made. */
  connects: number;
  /** Connections lost. */
  drops: number;
}

/**
 * A connection to reboundd for reports and queries: requests pipelined on
 * one connection, resent after a dropped connection or an `unavailable`
 * answer (with back-off) until resendDeadlineMs.
 */
export class Client extends EventEmitter {
  /**
   * @param address "host:port" or a Unix socket path (any string with a "/"),
   *   or several: reboundd instances sharing one schedule, tried in turn
   */
  constructor(address: string | string[], options?: ClientOptions);
  readonly address: string | string[];
  /** This client's own connection's counters (an owner's connection keeps its own). */
  readonly counters: ClientCounters;
  readonly routes: ClientRoutes;

  bounce(id: string, rcpt: string, code: number, options?: BounceOptions): Promise<BounceReply>;
  /** Replies in the order of `reports`; a refused report holds its error reply. */
  bounceMany(reports: BounceReport[]): Promise<Array<BounceReply | ErrorReply>>;
  delivered(id: string, options?: { rcpt?: string }): Promise<DeliveredReply>;
  cancel(id: string): Promise<CancelReply>;
  /** Rejects with code `not_found` for a message reboundd does not know. */
  get(id: string): Promise<GetReply>;
  getRecipient(rcpt: string): Promise<GetReply>;
  classify(code: number | null, options?: { enhanced?: string; text?: string }): Promise<ClassifyReply>;
  stats(): Promise<StatsReply>;
  ping(): Promise<{ ok: true }>;
  suppressed(options?: { cursor?: string; count?: number }): Promise<SuppressedReply>;
  unsuppress(rcpt: string): Promise<UnsuppressReply>;
  domain(domain: string): Promise<DomainReply>;
  /** Any op but subscribe and ack. */
  request(obj: { op: string; [member: string]: unknown }): Promise<Reply>;
  /** Takes no new request, waits for the ones made, then closes. */
  close(): Promise<void>;
  /** Closes at once; unanswered requests reject with `closed`. */
  destroy(): void;

  on(event: 'connect', listener: () => void): this;
  on(event: 'disconnect', listener: (err: Error) => void): this;
  on(event: string | symbol, listener: (...args: any[]) => void): this;
}

/** An event as reboundd sends it (docs/protocol.md, Events). */
export interface ReboundEvent {
  eid: string;
  type: EventType;
  at: number;
  id?: string;
  rcpt?: string;
  campaign?: string;
  meta?: Record<string, unknown>;
  class?: string;
  attempt?: number;
  /** retry: when it was due. */
  due_at?: number;
  code?: number;
  enhanced?: string;
  reason?: string;
  text?: string;
  domain?: string;
  repeats?: number;
  until?: number;
  replies?: number;
  window_ms?: number;
  [member: string]: unknown;
}

export interface ConsumerOptions {
  /** The event types wanted (default all). */
  types?: EventType[];
  token?: string;
  /** Send acks once this many wait (default 100, at most 500). */
  ackBatch?: number;
  /** Or once the oldest waiting ack is this old (default 1000). */
  ackDelayMs?: number;
  /** Connect and reply time-out; also close()'s longest wait for its acks (default 10000). */
  timeoutMs?: number;
  /** Ping a quiet connection this often (default 30000). */
  pingIntervalMs?: number;
  backoffMinMs?: number;
  backoffMaxMs?: number;
}

export interface ConsumerCounters {
  /** Events handed out. */
  events: number;
  /** Events that came again while still held here (not handed out twice). */
  redelivered: number;
  /** Acks confirmed by the daemon. */
  acked: number;
  /** Subscriptions made. */
  connects: number;
}

/**
 * A subscription to a consumer group's events, read with `for await`.
 * Reconnects and subscribes again by itself; delivery is at least once.
 */
export class Consumer extends EventEmitter implements AsyncIterableIterator<ReboundEvent> {
  constructor(address: string | string[], group: string, options?: ConsumerOptions);
  readonly address: string | string[];
  readonly group: string;
  readonly counters: ConsumerCounters;

  [Symbol.asyncIterator](): this;
  /** Rejects with a ReboundError when the subscription is refused. */
  next(): Promise<IteratorResult<ReboundEvent, undefined>>;
  /** Ending a `for await` loop early closes the consumer. */
  return(): Promise<IteratorResult<ReboundEvent, undefined>>;
  /** Acknowledge after acting on the event; sent in batches. */
  ack(ev: ReboundEvent | string | Array<ReboundEvent | string>): void;
  /** Flushes the acks (waits at most timeoutMs for their confirmation) and closes. */
  close(): Promise<void>;

  on(event: 'connect', listener: () => void): this;
  on(event: 'disconnect', listener: (err: Error) => void): this;
  on(event: string | symbol, listener: (...args: any[]) => void): this;
}
