/* The listeners: TCP (loopback by default) and the Unix socket. */
#ifndef REBOUND_DAEMON_SERVER_H
#define REBOUND_DAEMON_SERVER_H

/* Starts listening as configured. Returns 0, or -1 with the reason logged. */
int server_start(void);
/* Stops accepting (listeners closed; the Unix socket file removed). */
void server_stop(void);

#endif
