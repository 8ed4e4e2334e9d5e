'use strict';

/**
 * An error from reboundd or from the client itself.
 *
 * `code` is the protocol's error code (`bad_request`, `unknown_op`,
 * `too_large`, `not_found`, `unavailable`, `busy`, `auth_required`,
 * `internal`) or one of the client's own:
 * - `timeout`: no answer within the resend deadline (the daemon stayed
 *   unreachable or kept answering `unavailable`), or a consumer's ack flush
 *   on close took too long;
 * - `closed`: the client or consumer was closed before the request was
 *   answered;
 * - `protocol`: the peer sent something that is not the protocol (a line
 *   that is not JSON, a reply out of order).
 */
class ReboundError extends Error {
  /**
   * @param {string} code the protocol's or the client's error code
   * @param {string} message for people; program against `code`
   * @param {object} [reply] the error reply as reboundd sent it
   */
  constructor(code, message, reply) {
    super(message);
    this.name = 'ReboundError';
    this.code = code;
    if (reply !== undefined) this.reply = reply;
  }

  /**
   * Builds the error an `{"ok":false,...}` reply stands for.
   * @param {object} reply
   * @returns {ReboundError}
   */
  static fromReply(reply) {
    const e = reply && typeof reply.error === 'object' && reply.error !== null ? reply.error : {};
    const code = typeof e.code === 'string' ? e.code : 'internal';
    const message = typeof e.message === 'string' ? e.message : 'error reply without a message';
    return new ReboundError(code, message, reply);
  }
}

module.exports = { ReboundError };
