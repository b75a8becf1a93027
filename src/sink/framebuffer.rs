//! A display backend for the Linux framebuffer (`/dev/fb0`): kiosks with an
//! HDMI screen. The 128×64 status screen is scaled by the largest whole
//! factor that fits, centred, and written row by row respecting the
//! framebuffer's bits per pixel and line length (stride).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::display::{Canvas, Display, DisplayError, StatusScreen, SCREEN_SIZE};

/// The parts of the framebuffer's screen info that placing pixels needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FbGeometry {
    /// Visible width in pixels.
    pub width: u32,
    /// Visible height in pixels.
    pub height: u32,
    /// Bits per pixel: 8, 16, 24 or 32.
    pub bits_per_pixel: u32,
    /// Bytes per line (may exceed width × bytes per pixel).
    pub line_length: u32,
}

impl FbGeometry {
    fn bytes_per_pixel(&self) -> usize {
        self.bits_per_pixel as usize / 8
    }

    /// Whole-number scale and top-left offset of the screen on the fb.
    fn placement(&self) -> (u32, u32, u32) {
        let scale = (self.width / SCREEN_SIZE.width)
            .min(self.height / SCREEN_SIZE.height)
            .max(1);
        let x0 = self.width.saturating_sub(SCREEN_SIZE.width * scale) / 2;
        let y0 = self.height.saturating_sub(SCREEN_SIZE.height * scale) / 2;
        (scale, x0, y0)
    }
}

/// Renders the canvas into framebuffer rows: one `line_length` buffer per
/// visible line. Lit pixels are all-ones (white at 16/24/32 bpp, the last
/// palette entry at 8 bpp), dark ones zero.
pub fn render_rows(canvas: &Canvas, g: &FbGeometry) -> Vec<u8> {
    let bpp = g.bytes_per_pixel();
    let (scale, x0, y0) = g.placement();
    let mut out = vec![0u8; g.line_length as usize * g.height as usize];
    for y in 0..g.height {
        if y < y0 || y >= y0 + SCREEN_SIZE.height * scale {
            continue;
        }
        let sy = (y - y0) / scale;
        let row = &mut out[(y * g.line_length) as usize..][..g.line_length as usize];
        for sx in 0..SCREEN_SIZE.width {
            if !canvas.get(sx, sy) {
                continue;
            }
            for k in 0..scale {
                let x = x0 + sx * scale + k;
                if x >= g.width {
                    break;
                }
                let at = x as usize * bpp;
                row[at..at + bpp].fill(0xFF);
            }
        }
    }
    out
}

/// The framebuffer backend.
pub struct FbDisplay {
    path: PathBuf,
    file: File,
    geometry: FbGeometry,
    canvas: Canvas,
    written: Option<Canvas>,
}

impl FbDisplay {
    /// Opens a framebuffer device and reads its geometry.
    pub fn open(path: &Path) -> Result<FbDisplay, DisplayError> {
        let err = |message: String| DisplayError {
            target: path.display().to_string(),
            message,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| err(format!("cannot open: {e}")))?;
        let geometry = read_geometry(&file).map_err(|e| err(format!("not a framebuffer: {e}")))?;
        FbDisplay::with_geometry(path, file, geometry)
    }

    /// Uses an already open file with a known geometry (tests, or a
    /// memory-backed framebuffer).
    pub fn with_geometry(
        path: &Path,
        file: File,
        geometry: FbGeometry,
    ) -> Result<FbDisplay, DisplayError> {
        if !matches!(geometry.bits_per_pixel, 8 | 16 | 24 | 32)
            || geometry.line_length < geometry.width * geometry.bits_per_pixel / 8
        {
            return Err(DisplayError {
                target: path.display().to_string(),
                message: format!("unsupported framebuffer geometry {geometry:?}"),
            });
        }
        log::info!(
            "{}: {}×{} at {} bpp, {} bytes per line",
            path.display(),
            geometry.width,
            geometry.height,
            geometry.bits_per_pixel,
            geometry.line_length
        );
        Ok(FbDisplay {
            path: path.to_path_buf(),
            file,
            geometry,
            canvas: Canvas::default(),
            written: None,
        })
    }

    fn write(&mut self) -> Result<(), DisplayError> {
        let rows = render_rows(&self.canvas, &self.geometry);
        self.file.write_all_at(&rows, 0).map_err(|e| DisplayError {
            target: self.path.display().to_string(),
            message: format!("write failed: {e}"),
        })
    }
}

impl Display for FbDisplay {
    fn show(&mut self, screen: &StatusScreen) -> Result<(), DisplayError> {
        let Ok(()) = screen.draw(&mut self.canvas);
        if self.written.as_ref() == Some(&self.canvas) {
            return Ok(());
        }
        self.write()?;
        self.written = Some(self.canvas.clone());
        Ok(())
    }

    /// Blanks the screen: a stopped daemon shows nothing stale.
    fn shutdown(&mut self) -> Result<(), DisplayError> {
        self.canvas = Canvas::default();
        self.written = None;
        self.write()
    }
}

/// `struct fb_var_screeninfo` up to the fields read here (the kernel
/// writes the whole struct, 160 bytes).
#[repr(C)]
struct VarScreenInfo {
    xres: u32,
    yres: u32,
    xres_virtual: u32,
    yres_virtual: u32,
    xoffset: u32,
    yoffset: u32,
    bits_per_pixel: u32,
    rest: [u32; 33],
}

/// `struct fb_fix_screeninfo` (68 bytes on 32-bit, 80 on 64-bit), read
/// into a larger zeroed buffer; `line_length` sits after
/// `id[16], smem_start (unsigned long), smem_len, type, type_aux, visual,
/// xpanstep, ypanstep, ywrapstep`.
#[repr(C)]
struct FixScreenInfo {
    id: [u8; 16],
    smem_start: libc::c_ulong,
    smem_len: u32,
    kind: u32,
    type_aux: u32,
    visual: u32,
    xpanstep: u16,
    ypanstep: u16,
    ywrapstep: u16,
    line_length: u32,
    rest: [u8; 64],
}

const FBIOGET_VSCREENINFO: libc::c_ulong = 0x4600;
const FBIOGET_FSCREENINFO: libc::c_ulong = 0x4602;

fn read_geometry(file: &File) -> std::io::Result<FbGeometry> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let mut var = VarScreenInfo {
        xres: 0,
        yres: 0,
        xres_virtual: 0,
        yres_virtual: 0,
        xoffset: 0,
        yoffset: 0,
        bits_per_pixel: 0,
        rest: [0; 33],
    };
    // SAFETY: the kernel writes at most sizeof(fb_var_screeninfo) = 160
    // bytes, which is the size of `VarScreenInfo`.
    if unsafe { libc::ioctl(fd, FBIOGET_VSCREENINFO as _, &mut var as *mut VarScreenInfo) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: all-zero bytes are a valid FixScreenInfo; the kernel writes
    // at most sizeof(fb_fix_screeninfo) (80 bytes), less than ours.
    let mut fix: FixScreenInfo = unsafe { std::mem::zeroed() };
    if unsafe { libc::ioctl(fd, FBIOGET_FSCREENINFO as _, &mut fix as *mut FixScreenInfo) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(FbGeometry {
        width: var.xres,
        height: var.yres,
        bits_per_pixel: var.bits_per_pixel,
        line_length: fix.line_length,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_graphics::pixelcolor::BinaryColor;
    use embedded_graphics::prelude::*;

    fn canvas_with_pixel(x: i32, y: i32) -> Canvas {
        let mut c = Canvas::default();
        let Ok(()) = Pixel(Point::new(x, y), BinaryColor::On).draw(&mut c);
        c
    }

    #[test]
    fn scaling_centring_and_stride() {
        // 640×480 at 16 bpp with a padded stride: scale 5 (640/128), centred
        // vertically ((480 - 320) / 2 = 80).
        let g = FbGeometry {
            width: 640,
            height: 480,
            bits_per_pixel: 16,
            line_length: 1300,
        };
        let rows = render_rows(&canvas_with_pixel(1, 0), &g);
        assert_eq!(rows.len(), 1300 * 480);
        let lit: Vec<(usize, usize)> = rows
            .chunks(1300)
            .enumerate()
            .flat_map(|(y, r)| {
                r[..1280]
                    .chunks(2)
                    .enumerate()
                    .filter(|(_, p)| p == &[0xFF, 0xFF])
                    .map(move |(x, _)| (x, y))
            })
            .collect();
        assert_eq!(lit.len(), 25);
        assert!(lit
            .iter()
            .all(|&(x, y)| (5..10).contains(&x) && (80..85).contains(&y)));
        // Padding bytes past the visible line stay untouched.
        assert!(rows.chunks(1300).all(|r| r[1280..].iter().all(|&b| b == 0)));
    }

    #[test]
    fn writes_to_a_file_backed_framebuffer_and_blanks_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fb");
        let g = FbGeometry {
            width: 256,
            height: 128,
            bits_per_pixel: 8,
            line_length: 256,
        };
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut d = FbDisplay::with_geometry(&path, file, g).unwrap();
        d.show(&StatusScreen {
            faces: 1,
            ..Default::default()
        })
        .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 256 * 128);
        assert!(bytes.contains(&0xFF));
        d.shutdown().unwrap();
        assert!(std::fs::read(&path).unwrap().iter().all(|&b| b == 0));
    }

    #[test]
    fn bad_geometry_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fb");
        let file = File::create(&path).unwrap();
        let g = FbGeometry {
            width: 100,
            height: 100,
            bits_per_pixel: 12,
            line_length: 150,
        };
        assert!(FbDisplay::with_geometry(&path, file, g).is_err());
    }
}
