/*
 * gpio_edges: watches one GPIO line's level from outside the program that
 * drives it, and prints each change with the time it was seen.
 *
 *   gpio_edges VALUE_FILE
 *
 * VALUE_FILE is gpio-sim's sysfs attribute of the line
 * (/sys/devices/platform/gpio-sim.0/gpiochipN/sim_gpioK/value), which
 * reads the level the line's consumer set. Reads it every millisecond and
 * prints "level L T" on stdout at the first read and at each change: the
 * new level and the CLOCK_MONOTONIC seconds of the read that saw it (so an
 * edge is seen at most about a millisecond, plus scheduling delay, after
 * it happened). Runs until SIGTERM. Built on the host by the rig, run in
 * the guest.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop;
static void on_term(int sig) { (void)sig; stop = 1; }

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: gpio_edges VALUE_FILE\n");
    return 2;
  }
  struct sigaction sa = {.sa_handler = on_term};
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  int fd = open(argv[1], O_RDONLY);
  if (fd < 0) {
    fprintf(stderr, "gpio_edges: %s: %s\n", argv[1], strerror(errno));
    return 1;
  }
  int last = -1;
  const struct timespec tick = {0, 1000000};
  while (!stop) {
    char c[8];
    ssize_t got = pread(fd, c, sizeof c, 0);
    if (got < 1 || (c[0] != '0' && c[0] != '1')) {
      fprintf(stderr, "gpio_edges: %s: unreadable level\n", argv[1]);
      return 1;
    }
    int level = c[0] - '0';
    if (level != last) {
      struct timespec t;
      clock_gettime(CLOCK_MONOTONIC, &t);
      printf("level %d %.6f\n", level, t.tv_sec + t.tv_nsec / 1e9);
      fflush(stdout);
      last = level;
    }
    nanosleep(&tick, NULL);
  }
  return 0;
}
