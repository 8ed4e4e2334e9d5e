'use strict';

/* global OK */

// Test-only plugin: every connection may relay (the test is the sending
// platform), and every domain is delivered to the receiving Postfix on the
// port named in config/e2e_route.ini, since there is no DNS for the test
// domains.

exports.register = function () {
  this.port = Number(this.config.get('e2e_route.ini').main.port);
};

exports.hook_connect = function (next, connection) {
  connection.relaying = true;
  next();
};

exports.hook_get_mx = function (next, hmail, domain) {
  next(OK, { exchange: '127.0.0.1', port: this.port, priority: 10 });
};
