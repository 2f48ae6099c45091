//! Mandelbrot images, tile by tile.
//!
//! `mandelbrot tile PARAMS` renders one tile as 8-bit grey levels, row by row. PARAMS is a
//! 28-byte blob of little-endian u32s: image width, image height, tile x, tile y, tile width,
//! tile height, max iterations. The view is x in [-2.5, 1], y in [-1.25, 1.25].
//!
//! `mandelbrot image PARAMS TILE...` assembles tiles (row-major, as the job lists them) into a
//! binary PPM (P6) with a colour ramp. PARAMS: image width, image height, tile width, tile
//! height (16 bytes).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;

use cairn_userlib::{Handle, TaskError, TaskResult, create_blob, open};

fn fields<const N: usize>(p: &[u8]) -> Result<[u32; N], TaskError> {
    if p.len() != 4 * N {
        return Err(TaskError(alloc::format!("expected {} little-endian u32s", N)));
    }
    Ok(core::array::from_fn(|i| u32::from_le_bytes([p[4 * i], p[4 * i + 1], p[4 * i + 2], p[4 * i + 3]])))
}

fn tile(params: &Handle) -> TaskResult {
    let [width, height, x0, y0, tw, th, max_iter] = fields::<7>(open(params))?;
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
            // Inside the set is 0; outside, brighter the faster it escapes.
            pixels.push(if n == max_iter { 0 } else { 255 - (n * 255 / max_iter) as u8 });
        }
    }
    Ok(create_blob(&pixels))
}

fn image(params: &Handle, tiles: &[Handle]) -> TaskResult {
    let [width, height, tw, th] = fields::<4>(open(params))?;
    if tw == 0 || th == 0 || width % tw != 0 || height % th != 0 {
        return Err("image size must be a whole number of tiles".into());
    }
    let across = (width / tw) as usize;
    if tiles.len() != across * (height / th) as usize {
        return Err("wrong number of tiles for the image".into());
    }
    let header = alloc::format!("P6\n{width} {height}\n255\n");
    let mut out = vec![0u8; header.len() + (width * height * 3) as usize];
    out[..header.len()].copy_from_slice(header.as_bytes());
    let body = &mut out[header.len()..];
    for (index, handle) in tiles.iter().enumerate() {
        let grey = open(handle);
        if grey.len() != (tw * th) as usize {
            return Err("a tile has the wrong size".into());
        }
        let (tx, ty) = ((index % across) as u32 * tw, (index / across) as u32 * th);
        for (i, &g) in grey.iter().enumerate() {
            let (x, y) = (tx + i as u32 % tw, ty + i as u32 / tw);
            let at = ((y * width + x) * 3) as usize;
            // A blue-to-gold ramp; the set itself stays black.
            body[at..at + 3].copy_from_slice(&if g == 0 {
                [0, 0, 0]
            } else {
                [g / 3, g / 2 + 40, 255 - g / 2]
            });
        }
    }
    Ok(create_blob(&out))
}

fn run(args: &[Handle]) -> TaskResult {
    let (mode, rest) = args.split_first().ok_or("mandelbrot needs a mode: tile or image")?;
    match (open(mode), rest) {
        (b"tile", [params]) => tile(params),
        (b"image", [params, tiles @ ..]) => image(params, tiles),
        _ => Err("usage: mandelbrot tile PARAMS | mandelbrot image PARAMS TILE...".into()),
    }
}

cairn_userlib::task!(run);
