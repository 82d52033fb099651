//! `timeline.png`: the report's plots drawn into an RGB image (fault
//! bands, lines, axes and a small bitmap font of our own), encoded with
//! the `png` crate. No system fonts or plotting libraries needed.

use crate::check::Verdict;
use crate::report::Series;
use std::path::Path;

type Rgb = [u8; 3];

/// A plot: its title and its lines (points, colour).
type Plot<'a> = (&'a str, Vec<(&'a [(f64, f64)], Rgb)>);

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

/// 5×7 glyphs, one row per byte (bit 4 is the left column).
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_lowercase() {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1E, 0x01, 0x01, 0x0E, 0x01, 0x01, 0x1E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'a' => [0x00, 0x00, 0x0E, 0x01, 0x0F, 0x11, 0x0F],
        'b' => [0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1E],
        'c' => [0x00, 0x00, 0x0E, 0x10, 0x10, 0x11, 0x0E],
        'd' => [0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F],
        'e' => [0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E],
        'f' => [0x06, 0x09, 0x08, 0x1C, 0x08, 0x08, 0x08],
        'g' => [0x00, 0x0F, 0x11, 0x11, 0x0F, 0x01, 0x0E],
        'h' => [0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11],
        'i' => [0x04, 0x00, 0x0C, 0x04, 0x04, 0x04, 0x0E],
        'j' => [0x02, 0x00, 0x06, 0x02, 0x02, 0x12, 0x0C],
        'k' => [0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12],
        'l' => [0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'm' => [0x00, 0x00, 0x1A, 0x15, 0x15, 0x11, 0x11],
        'n' => [0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11],
        'o' => [0x00, 0x00, 0x0E, 0x11, 0x11, 0x11, 0x0E],
        'p' => [0x00, 0x00, 0x1E, 0x11, 0x1E, 0x10, 0x10],
        'q' => [0x00, 0x00, 0x0D, 0x13, 0x0F, 0x01, 0x01],
        'r' => [0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10],
        's' => [0x00, 0x00, 0x0E, 0x10, 0x0E, 0x01, 0x1E],
        't' => [0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06],
        'u' => [0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0D],
        'v' => [0x00, 0x00, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'w' => [0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0A],
        'x' => [0x00, 0x00, 0x11, 0x0A, 0x04, 0x0A, 0x11],
        'y' => [0x00, 0x00, 0x11, 0x11, 0x0F, 0x01, 0x0E],
        'z' => [0x00, 0x00, 0x1F, 0x02, 0x04, 0x08, 0x1F],
        ' ' => [0; 7],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        '/' => [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        ',' => [0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '=' => [0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00],
        '#' => [0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A],
        _ => [0x1F, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1F],
    }
}

impl Canvas {
    fn new(w: usize, h: usize) -> Canvas {
        Canvas {
            w,
            h,
            px: vec![255; w * h * 3],
        }
    }

    fn blend(&mut self, x: i64, y: i64, c: Rgb, alpha: f64) {
        if x < 0 || y < 0 || x >= self.w as i64 || y >= self.h as i64 {
            return;
        }
        let i = (y as usize * self.w + x as usize) * 3;
        for (px, want) in self.px[i..i + 3].iter_mut().zip(c) {
            let old = f64::from(*px);
            *px = (old + (f64::from(want) - old) * alpha).round() as u8;
        }
    }

    fn rect(&mut self, x0: f64, y0: f64, x1: f64, y1: f64, c: Rgb, alpha: f64) {
        for y in y0.round() as i64..y1.round() as i64 {
            for x in x0.round() as i64..x1.round().max(x0.round() + 1.0) as i64 {
                self.blend(x, y, c, alpha);
            }
        }
    }

    /// A line, stepped along its longer axis.
    fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: Rgb) {
        let steps = (x1 - x0).abs().max((y1 - y0).abs()).ceil().max(1.0) as i64;
        for s in 0..=steps {
            let t = s as f64 / steps as f64;
            let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
            self.blend(x.round() as i64, y.round() as i64, c, 1.0);
        }
    }

    fn text(&mut self, x: f64, y: f64, s: &str, c: Rgb) {
        let (x, y) = (x.round() as i64, y.round() as i64);
        for (n, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        self.blend(x + n as i64 * 6 + col, y + row as i64, c, 1.0);
                    }
                }
            }
        }
    }

    fn save(&self, path: &Path) -> anyhow::Result<()> {
        let f = std::io::BufWriter::new(std::fs::File::create(path)?);
        let mut enc = png::Encoder::new(f, self.w as u32, self.h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header()?;
        w.write_image_data(&self.px)?;
        Ok(())
    }
}

const W: usize = 960;
const PLOT_H: usize = 140;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;

/// Draws the report's plots, one under the other, to `path`.
pub fn timeline(path: &Path, verdict: &Verdict, s: &Series, end: f64) -> anyhow::Result<()> {
    let plots: [Plot; 5] = [
        (
            "acknowledged ingest, events/s",
            vec![(&s.ingest, [33, 102, 172])],
        ),
        (
            "serving latency ms: p50, p99",
            vec![
                (&s.serve_p50, [27, 120, 55]),
                (&s.serve_p99, [118, 42, 131]),
            ],
        ),
        (
            "serving requests not answered 200, per 5 s",
            vec![(&s.serve_failed, [178, 24, 43])],
        ),
        ("lag, events", vec![(&s.lag, [140, 81, 10])]),
        ("leader (node number)", vec![(&s.leader, [1, 102, 94])]),
    ];
    let header = 24usize;
    let mut c = Canvas::new(W, header + PLOT_H * plots.len());
    let title = format!(
        "lockstep-chaos seed {}: {}",
        verdict.seed,
        if verdict.passed { "passed" } else { "failed" }
    );
    let colour = if verdict.passed {
        [26, 127, 55]
    } else {
        [207, 34, 46]
    };
    c.text(LEFT, 8.0, &title, colour);
    let x = |t: f64| LEFT + (t / end.max(1.0)) * (W as f64 - LEFT - RIGHT);
    for (k, (name, series)) in plots.iter().enumerate() {
        let top = (header + k * PLOT_H) as f64;
        let (y0, y1) = (top + 16.0, top + PLOT_H as f64 - 18.0);
        for f in &verdict.steps {
            let to = f.recovered.unwrap_or(end);
            c.rect(x(f.started), y0, x(f.healed), y1, [244, 165, 130], 0.5);
            c.rect(x(f.healed), y0, x(to), y1, [253, 219, 199], 0.5);
            if k == 0 {
                c.text(x(f.started), y0 + 2.0, f.fault.name(), [120, 60, 40]);
            }
        }
        let ymax = series
            .iter()
            .flat_map(|(pts, _)| pts.iter().map(|p| p.1))
            .fold(0.0f64, f64::max)
            .max(1.0)
            * 1.1;
        let y = |v: f64| y0 + (1.0 - v / ymax) * (y1 - y0);
        c.line((LEFT, y1), (W as f64 - RIGHT, y1), [68, 68, 68]);
        c.line((LEFT, y0), (LEFT, y1), [68, 68, 68]);
        c.text(LEFT, top + 4.0, name, [0, 0, 0]);
        c.text(
            4.0,
            y(ymax / 1.1) - 3.0,
            &format!("{:.0}", ymax / 1.1),
            [0, 0, 0],
        );
        c.text(4.0, y1 - 7.0, "0", [0, 0, 0]);
        for i in 0..=5 {
            let t = end * f64::from(i) / 5.0;
            c.text(x(t) - 8.0, y1 + 5.0, &format!("{t:.0}s"), [0, 0, 0]);
        }
        for (pts, col) in series {
            for w in pts.windows(2) {
                c.line((x(w[0].0), y(w[0].1)), (x(w[1].0), y(w[1].1)), *col);
            }
        }
    }
    c.save(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_canvas_draws_and_encodes_a_png_that_decodes_back() {
        let mut c = Canvas::new(40, 20);
        c.rect(0.0, 0.0, 10.0, 10.0, [255, 0, 0], 1.0);
        c.line((0.0, 19.0), (39.0, 19.0), [0, 0, 255]);
        c.text(12.0, 2.0, "a1", [0, 0, 0]);
        assert_eq!(&c.px[0..3], &[255, 0, 0]);
        let last = (19 * 40 + 39) * 3;
        assert_eq!(&c.px[last..last + 3], &[0, 0, 255]);
        let p = std::env::temp_dir().join(format!("chaos-canvas-{}.png", std::process::id()));
        c.save(&p).unwrap();
        let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&p).unwrap()));
        let mut r = dec.read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size().unwrap()];
        let info = r.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (40, 20));
        assert_eq!(&buf[..info.buffer_size()], &c.px[..]);
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn every_glyph_the_report_writes_is_drawn() {
        for ch in "lockstep-chaos seed 0123456789: passed failed (node number), ms p50 p99 /s %=#."
            .chars()
        {
            let g = glyph(ch);
            if ch != ' ' {
                assert_ne!(g, glyph('\u{1}'), "{ch:?} has no glyph");
                assert!(g.iter().any(|r| *r != 0), "{ch:?}");
            }
        }
    }
}
