//! Service-manager integration: readiness, watchdog and status through
//! `sd_notify`, and log lines the journal can rank.
//!
//! Everything here is a no-op when ferd is not started by systemd
//! (`NOTIFY_SOCKET` unset), so the same binary runs from a shell.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// Talks to the service manager.
#[derive(Debug)]
pub struct Notifier {
    enabled: bool,
    /// Half the watchdog timeout, as systemd recommends; `None` if no
    /// watchdog is configured.
    ping_every: Option<Duration>,
    last_ping: Option<Instant>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`.
    pub fn from_env() -> Notifier {
        let mut usec = 0;
        let watchdog = sd_notify::watchdog_enabled(false, &mut usec);
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
            ping_every: (watchdog && usec > 0).then(|| Duration::from_micros(usec / 2)),
            last_ping: None,
        }
    }

    /// Whether a watchdog is configured.
    pub fn watchdog(&self) -> Option<Duration> {
        self.ping_every.map(|d| d * 2)
    }

    fn send(&self, states: &[NotifyState]) {
        if self.enabled {
            if let Err(e) = sd_notify::notify(false, states) {
                log::warn!("sd_notify failed: {e}");
            }
        }
    }

    /// Models loaded, source open: the service is up.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// A frame was analysed: the pipeline is alive, feed the watchdog (at
    /// most every half timeout). Called only from the analysis loop, so a
    /// stuck camera or model starves the watchdog and systemd restarts us.
    pub fn alive(&mut self) {
        let Some(every) = self.ping_every else {
            return;
        };
        let now = Instant::now();
        if self
            .last_ping
            .is_none_or(|t| now.duration_since(t) >= every)
        {
            self.send(&[NotifyState::Watchdog]);
            self.last_ping = Some(now);
        }
    }

    /// Shutting down.
    /// A reload began (SIGHUP): systemd shows the unit "reloading" until
    /// the next [`Notifier::ready`].
    pub fn reloading(&self) {
        // MONOTONIC_USEC lets systemd (`Type=notify-reload`, 253+) tell this
        // reload from an older one; with `ExecReload=` it is harmless.
        let mut states = vec![NotifyState::Reloading];
        states.extend(NotifyState::monotonic_usec_now().ok());
        self.send(&states);
    }

    /// The service is stopping.
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }
}

/// Sets up logging to stderr at `RUST_LOG` (default `info`): under the
/// journal with syslog priority prefixes and no timestamps (the journal
/// adds its own), elsewhere plain lines.
pub fn init_logging() {
    use std::io::Write;
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if stderr_is_journal() {
        logger.format(|f, record| {
            writeln!(
                f,
                "<{}>{}: {}",
                syslog_priority(record.level()),
                record.target(),
                record.args()
            )
        });
    } else {
        logger.format_timestamp(None);
    }
    logger.init();
}

/// Whether stderr goes to the journal (`JOURNAL_STREAM` names its device
/// and inode), in which case log lines carry `<N>` syslog priority prefixes
/// instead of timestamps.
pub fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// The syslog priority of a log level, for journal prefixes.
pub fn syslog_priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}
