/*
 * vivid_loop: sets up vivid's loop from its HDMI video output to its HDMI
 * capture input, what `v4l2-ctl` did in the x86_64-only rig, but built
 * statically for whichever architecture the guest runs (the aarch64 guest
 * has no v4l2-ctl and no libraries for one):
 *
 *   vivid_loop CAPTURE OUTPUT WIDTH HEIGHT
 *
 * 1. both nodes get the first DV timings vivid offers (640x480, DMT),
 * 2. the output gets WIDTH x HEIGHT YUYV,
 * 3. the capture node's "Loop Video" control is set to 1 and its
 *    "OSD Text Mode" to 2 (no text drawn over the looped picture).
 *
 * Exits non-zero with the step and the device named when any ioctl fails.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/videodev2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

static const char *dev_name;

static void die(const char *what) {
  fprintf(stderr, "vivid_loop: %s: %s: %s\n", dev_name, what, strerror(errno));
  exit(1);
}

static int open_dev(const char *path) {
  dev_name = path;
  int fd = open(path, O_RDWR);
  if (fd < 0) die("open");
  return fd;
}

static void first_dv_timings(int fd) {
  struct v4l2_enum_dv_timings e = {.index = 0};
  if (ioctl(fd, VIDIOC_ENUM_DV_TIMINGS, &e)) die("VIDIOC_ENUM_DV_TIMINGS");
  if (ioctl(fd, VIDIOC_S_DV_TIMINGS, &e.timings)) die("VIDIOC_S_DV_TIMINGS");
}

/* Sets the control whose name is `name` (as the driver spells it). */
static void set_ctrl(int fd, const char *name, int value) {
  struct v4l2_queryctrl q = {.id = V4L2_CTRL_FLAG_NEXT_CTRL};
  while (ioctl(fd, VIDIOC_QUERYCTRL, &q) == 0) {
    if (strcmp((const char *)q.name, name) == 0) {
      struct v4l2_control c = {.id = q.id, .value = value};
      if (ioctl(fd, VIDIOC_S_CTRL, &c)) die(name);
      return;
    }
    q.id |= V4L2_CTRL_FLAG_NEXT_CTRL;
  }
  fprintf(stderr, "vivid_loop: %s: no control named \"%s\"\n", dev_name, name);
  exit(1);
}

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: vivid_loop CAPTURE OUTPUT WIDTH HEIGHT\n");
    return 2;
  }
  int cap = open_dev(argv[1]);
  first_dv_timings(cap);
  int out = open_dev(argv[2]);
  first_dv_timings(out);
  struct v4l2_format fmt = {.type = V4L2_BUF_TYPE_VIDEO_OUTPUT};
  if (ioctl(out, VIDIOC_G_FMT, &fmt)) die("VIDIOC_G_FMT");
  fmt.fmt.pix.width = (unsigned)atoi(argv[3]);
  fmt.fmt.pix.height = (unsigned)atoi(argv[4]);
  fmt.fmt.pix.pixelformat = V4L2_PIX_FMT_YUYV;
  fmt.fmt.pix.field = V4L2_FIELD_NONE;
  fmt.fmt.pix.bytesperline = 0;
  if (ioctl(out, VIDIOC_S_FMT, &fmt)) die("VIDIOC_S_FMT");
  if (fmt.fmt.pix.width != (unsigned)atoi(argv[3]) || fmt.fmt.pix.height != (unsigned)atoi(argv[4]) ||
      fmt.fmt.pix.pixelformat != V4L2_PIX_FMT_YUYV) {
    fprintf(stderr, "vivid_loop: %s: the driver chose %ux%u instead of %sx%s YUYV\n", argv[2],
            fmt.fmt.pix.width, fmt.fmt.pix.height, argv[3], argv[4]);
    return 1;
  }
  close(out);
  dev_name = argv[1];
  set_ctrl(cap, "Loop Video", 1);
  set_ctrl(cap, "OSD Text Mode", 2);
  close(cap);
  return 0;
}
