/*
 * notify_log: stands in for systemd's notify socket in the rig guest, so a
 * scenario can see what ferd says through sd_notify (READY=1, WATCHDOG=1,
 * STOPPING=1) and when:
 *
 *   notify_log SOCKET LOG
 *
 * Binds a unix datagram socket at SOCKET and appends one line to LOG per
 * datagram received: the CLOCK_BOOTTIME time in seconds (the clock of
 * /proc/uptime, which the scenario's shell reads), a space, and the
 * datagram's text with newlines turned into spaces. Runs until killed.
 * Built statically like the rig's other helpers (the aarch64 guest has no
 * C library of its own).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: notify_log SOCKET LOG\n");
    return 2;
  }
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  if (strlen(argv[1]) >= sizeof addr.sun_path) {
    fprintf(stderr, "notify_log: %s: path too long for a unix socket\n", argv[1]);
    return 2;
  }
  strcpy(addr.sun_path, argv[1]);
  int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
  if (fd < 0) {
    fprintf(stderr, "notify_log: socket: %s\n", strerror(errno));
    return 1;
  }
  unlink(argv[1]);
  if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
    fprintf(stderr, "notify_log: %s: bind: %s\n", argv[1], strerror(errno));
    return 1;
  }
  FILE *log = fopen(argv[2], "a");
  if (!log) {
    fprintf(stderr, "notify_log: %s: %s\n", argv[2], strerror(errno));
    return 1;
  }
  /* sd_notify datagrams are small; anything longer is cut, not split. */
  char buf[4096];
  for (;;) {
    ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      fprintf(stderr, "notify_log: recv: %s\n", strerror(errno));
      return 1;
    }
    buf[n] = 0;
    for (ssize_t i = 0; i < n; i++)
      if (buf[i] == '\n' || buf[i] == 0) buf[i] = ' ';
    struct timespec ts;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    fprintf(log, "%ld.%03ld %s\n", (long)ts.tv_sec, ts.tv_nsec / 1000000, buf);
    fflush(log);
  }
}
