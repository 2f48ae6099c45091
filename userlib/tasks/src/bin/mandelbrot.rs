//! Renders one tile of the Mandelbrot set as 8-bit grey pixels, row by row.
//!
//! Argument: a 28-byte blob of little-endian u32s: image width, image height, tile x, tile y,
//! tile width, tile height, max iterations. The view is x in [-2.5, 1], y in [-1.25, 1.25].
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;

use cairn_userlib::{Handle, TaskResult, create_blob, open};

fn run(args: &[Handle]) -> TaskResult {
    let [params] = args else { return Err("mandelbrot takes one parameter blob".into()) };
    let p = open(params);
    if p.len() != 28 {
        return Err("mandelbrot parameters are 7 little-endian u32s".into());
    }
    let field = |i: usize| u32::from_le_bytes([p[4 * i], p[4 * i + 1], p[4 * i + 2], p[4 * i + 3]]);
    let (width, height, x0, y0, tw, th, max_iter) =
        (field(0), field(1), field(2), field(3), field(4), field(5), field(6));
    if width == 0 || height == 0 || max_iter == 0 || x0 + tw > width || y0 + th > height {
        return Err("mandelbrot tile lies outside the image".into());
    }
    let mut pixels = Vec::with_capacity((tw * th) as usize);
    for py in y0..y0 + th {
        let ci = -1.25 + 2.5 * (py as f64 + 0.5) / height as f64;
        for px in x0..x0 + tw {
            let cr = -2.5 + 3.5 * (px as f64 + 0.5) / width as f64;
            let (mut zr, mut zi, mut n) = (0.0f64, 0.0f64, 0);
            while n < max_iter && zr * zr + zi * zi <= 4.0 {
                let t = zr * zr - zi * zi + cr;
                zi = 2.0 * zr * zi + ci;
                zr = t;
                n += 1;
            }
            // Inside the set is black; outside, brighter the faster it escapes.
            pixels.push(if n == max_iter { 0 } else { 255 - (n * 255 / max_iter) as u8 });
        }
    }
    Ok(create_blob(&pixels))
}

cairn_userlib::task!(run);
