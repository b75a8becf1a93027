/*
 * vout: plays a mono YUV4MPEG2 clip into a V4L2 output device (vivid's
 * video output, looped into its capture device) at a given frame rate,
 * whatever rate the device itself runs at: every buffer the driver hands
 * back is refilled with the clip frame due at that moment (scaled, nearest
 * neighbour, to the output size, as grey YUYV), so the capture side sees
 * the clip in real time. Built on the host by the rig, run in the guest.
 *
 *   vout DEVICE CLIP.y4m FPS
 *   vout DEVICE CLIP.y4m step
 *
 * Plays the clip once, then keeps showing its last frame until killed
 * (SIGTERM), and prints "done" on stdout when the clip has ended. With
 * `step`, shows frame 0 and moves on to the next one (after the last, back
 * to frame 0) at each SIGUSR1, so that a scenario changes the picture
 * exactly when it wants to.
 *
 * Each time a buffer with another clip frame than the last one goes to the
 * driver, prints "shown K T" on stdout: clip frame K, queued at T seconds
 * of CLOCK_MONOTONIC. vivid shows it within the few output frames still
 * queued before it (NBUF - 1 at 60 fps, about 50 ms), so T is the earliest
 * moment the camera can see the frame.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/videodev2.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define NBUF 4

static volatile sig_atomic_t stop, steps;
static void on_term(int sig) { (void)sig; stop = 1; }
static void on_step(int sig) { (void)sig; steps++; }

static void die(const char *what) {
  fprintf(stderr, "vout: %s: %s\n", what, strerror(errno));
  exit(1);
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: vout DEVICE CLIP.y4m FPS|step\n");
    return 2;
  }
  int step = !strcmp(argv[3], "step");
  double fps = step ? 0 : atof(argv[3]);
  struct sigaction sa = {.sa_handler = on_term}; /* no SA_RESTART */
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  struct sigaction su = {.sa_handler = on_step};
  sigaction(SIGUSR1, &su, NULL);

  /* The clip: mono 4:2:0-less Y4M, luma planes only. */
  FILE *f = fopen(argv[2], "rb");
  if (!f) die(argv[2]);
  char header[256];
  if (!fgets(header, sizeof header, f) || strncmp(header, "YUV4MPEG2 ", 10)) {
    fprintf(stderr, "vout: %s: not a YUV4MPEG2 clip\n", argv[2]);
    return 1;
  }
  int w = 0, h = 0;
  for (char *p = strtok(header, " \n"); p; p = strtok(NULL, " \n")) {
    if (p[0] == 'W') w = atoi(p + 1);
    if (p[0] == 'H') h = atoi(p + 1);
  }
  if (w <= 0 || h <= 0) {
    fprintf(stderr, "vout: bad clip header\n");
    return 1;
  }
  size_t cap = 16, n = 0;
  unsigned char **frames = malloc(cap * sizeof *frames);
  char line[64];
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, "FRAME", 5)) break;
    unsigned char *y = malloc((size_t)w * h);
    if (fread(y, 1, (size_t)w * h, f) != (size_t)w * h) { free(y); break; }
    if (n == cap) frames = realloc(frames, (cap *= 2) * sizeof *frames);
    frames[n++] = y;
  }
  fclose(f);
  if (n == 0) {
    fprintf(stderr, "vout: no frames in %s\n", argv[2]);
    return 1;
  }

  int fd = open(argv[1], O_RDWR);
  if (fd < 0) die(argv[1]);
  struct v4l2_format fmt = {.type = V4L2_BUF_TYPE_VIDEO_OUTPUT};
  if (ioctl(fd, VIDIOC_G_FMT, &fmt)) die("VIDIOC_G_FMT");
  if (fmt.fmt.pix.pixelformat != V4L2_PIX_FMT_YUYV) {
    fprintf(stderr, "vout: the output is not YUYV\n");
    return 1;
  }
  unsigned ow = fmt.fmt.pix.width, oh = fmt.fmt.pix.height;
  unsigned stride = fmt.fmt.pix.bytesperline, size = fmt.fmt.pix.sizeimage;

  struct v4l2_requestbuffers req = {
      .count = NBUF, .type = V4L2_BUF_TYPE_VIDEO_OUTPUT, .memory = V4L2_MEMORY_MMAP};
  if (ioctl(fd, VIDIOC_REQBUFS, &req)) die("VIDIOC_REQBUFS");
  unsigned char *mem[NBUF];
  long held[NBUF];
  for (unsigned i = 0; i < req.count; i++) {
    struct v4l2_buffer b = {.index = i, .type = req.type, .memory = req.memory};
    if (ioctl(fd, VIDIOC_QUERYBUF, &b)) die("VIDIOC_QUERYBUF");
    mem[i] = mmap(NULL, b.length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, b.m.offset);
    if (mem[i] == MAP_FAILED) die("mmap");
    held[i] = -1;
  }

  double start = now();
  int announced = 0;
  long last_shown = -1;
  for (unsigned i = 0;; i++) {
    struct v4l2_buffer b = {.type = req.type, .memory = req.memory};
    if (i < req.count) {
      b.index = i;
    } else {
      if (stop) break;
      if (ioctl(fd, VIDIOC_DQBUF, &b)) {
        if (errno == EINTR) continue;
        die("VIDIOC_DQBUF");
      }
    }
    long k = step ? (long)(steps % n) : (long)((now() - start) * fps);
    if (!step && k >= (long)n) {
      k = n - 1;
      if (!announced) {
        printf("done\n");
        fflush(stdout);
        announced = 1;
      }
    }
    if (held[b.index] != k) {
      const unsigned char *src = frames[k];
      for (unsigned yy = 0; yy < oh; yy++) {
        const unsigned char *row = src + (size_t)(yy * h / oh) * w;
        unsigned char *out = mem[b.index] + (size_t)yy * stride;
        for (unsigned xx = 0; xx < ow; xx++) {
          out[2 * xx] = row[xx * w / ow];
          out[2 * xx + 1] = 128;
        }
      }
      held[b.index] = k;
    }
    b.bytesused = size;
    b.field = V4L2_FIELD_NONE;
    if (ioctl(fd, VIDIOC_QBUF, &b)) die("VIDIOC_QBUF");
    if (k != last_shown) {
      printf("shown %ld %.6f\n", k, now());
      fflush(stdout);
      last_shown = k;
    }
    if (i + 1 == req.count) {
      int type = V4L2_BUF_TYPE_VIDEO_OUTPUT;
      if (ioctl(fd, VIDIOC_STREAMON, &type)) die("VIDIOC_STREAMON");
    }
  }
  int type = V4L2_BUF_TYPE_VIDEO_OUTPUT;
  ioctl(fd, VIDIOC_STREAMOFF, &type);
  return 0;
}
