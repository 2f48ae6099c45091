//! The COM1 console: every line the node prints, and the `log` backend with levels.

use core::fmt::{self, Write};

use cairn_bootcfg::LogLevel;
use spin::Mutex;
use uart_16550::{Config, Uart16550Tty, backend::PioBackend};

const COM1: u16 = 0x3f8;

static PORT: Mutex<Option<Uart16550Tty<PioBackend>>> = Mutex::new(None);

/// Brings up COM1. Without a UART (some cloud machines) the console silently goes nowhere.
pub fn init() {
    // SAFETY: 0x3f8..0x400 is COM1 on every PC platform, and nothing else in the kernel touches
    // these ports; the driver is only used through `PORT`'s lock.
    let port = unsafe { Uart16550Tty::new_port(COM1, Config::default()) }.ok();
    *PORT.lock() = port;
}

/// Writes to the console even if a fault interrupted a writer that held the lock: a report of a
/// crash matters more than a garbled line.
pub fn write_fmt_raw(args: fmt::Arguments) {
    let mut guard = match PORT.try_lock() {
        Some(guard) => guard,
        None => {
            // SAFETY: only reached on the crash path, with interrupts off, where the holder of the
            // lock can never run again; forcing it open is the only way to get the report out.
            unsafe { PORT.force_unlock() };
            PORT.lock()
        }
    };
    if let Some(port) = guard.as_mut() {
        let _ = port.write_fmt(args);
    }
}

pub fn write_fmt(args: fmt::Arguments) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        if let Some(port) = PORT.lock().as_mut() {
            let _ = port.write_fmt(args);
        }
    });
}

/// Prints to the console without a log prefix: the node's machine-readable lines
/// (`cairn: ready ...`) go through here.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::drivers::serial::write_fmt(format_args!("{}\n", format_args!($($arg)*)))
    };
}

struct SerialLogger;

static LOGGER: SerialLogger = SerialLogger;

impl log::Log for SerialLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let micros = crate::arch::clock::micros_since_boot();
            write_fmt(format_args!(
                "[{:>5}.{:06}] {:<5} {}\n",
                micros / 1_000_000,
                micros % 1_000_000,
                level_name(record.level()),
                record.args()
            ));
        }
    }

    fn flush(&self) {}
}

fn level_name(level: log::Level) -> &'static str {
    match level {
        log::Level::Error => "error",
        log::Level::Warn => "warn",
        log::Level::Info => "info",
        log::Level::Debug => "debug",
        log::Level::Trace => "trace",
    }
}

pub fn init_logger(level: LogLevel) {
    let filter = match level {
        LogLevel::Error => log::LevelFilter::Error,
        LogLevel::Warn => log::LevelFilter::Warn,
        LogLevel::Info => log::LevelFilter::Info,
        LogLevel::Debug => log::LevelFilter::Debug,
        LogLevel::Trace => log::LevelFilter::Trace,
    };
    // A second call (never made) would keep the first logger; nothing to report.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(filter);
}
