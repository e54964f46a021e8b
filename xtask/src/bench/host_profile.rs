//! `bench step --host-profile FILE`: where the host's CPU time goes in a training step.
//!
//! The sparse step is host-bound in its forward (docs/perf.md): the GPU waits for launches. The
//! GPU machine has no `perf`, so this samples the process itself (SIGPROF, `pprof`), over steps
//! run after the measured ones, and writes a text report (per thread: samples, the functions
//! most often on top of the stack, the functions most often anywhere on it) and the folded stacks
//! (`FILE.folded`, one `thread;root;...;leaf count` line per stack, for flame graphs).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

/// Samples per second of CPU time (a prime, so that the timer does not beat with the step).
const FREQUENCY: i32 = 997;
/// Rows of each table in the report.
const TOP: usize = 60;

/// A running profile; [`HostProfile::finish`] writes it.
pub struct HostProfile {
    #[cfg(target_os = "linux")]
    guard: pprof::ProfilerGuard<'static>,
    /// The process's CPU time and the wall clock at the start: the kernel delivers fewer
    /// samples than asked for (its timer tick caps the rate), so samples are scaled to the CPU
    /// time actually spent.
    cpu_start: f64,
    wall_start: std::time::Instant,
}

impl HostProfile {
    /// Starts sampling every thread of the process.
    pub fn start() -> anyhow::Result<Self> {
        #[cfg(target_os = "linux")]
        {
            let guard = pprof::ProfilerGuardBuilder::default()
                .frequency(FREQUENCY)
                .blocklist(&["libc", "libgcc", "pthread", "vdso"])
                .build()
                .context("starting the host profiler")?;
            Ok(Self {
                guard,
                cpu_start: process_cpu_seconds(),
                wall_start: std::time::Instant::now(),
            })
        }
        #[cfg(not(target_os = "linux"))]
        anyhow::bail!("--host-profile needs Linux")
    }

    /// Stops sampling and writes the report to `path` and the folded stacks beside it; `steps`
    /// is how many steps ran under the profile (the report gives ms per step).
    pub fn finish(self, path: &Path, steps: usize) -> anyhow::Result<()> {
        #[cfg(target_os = "linux")]
        {
            let cpu_ms = (process_cpu_seconds() - self.cpu_start) * 1e3;
            let wall_ms = self.wall_start.elapsed().as_secs_f64() * 1e3;
            let report = self
                .guard
                .report()
                .build()
                .context("building the host profile")?;
            let mut stacks: Vec<(String, Vec<String>, usize)> = Vec::new();
            for (frames, &count) in &report.data {
                // Leaf first, each frame's inlined functions innermost first.
                let names: Vec<String> = frames
                    .frames
                    .iter()
                    .flat_map(|frame| frame.iter().map(|s| short_name(&s.name())))
                    .collect();
                stacks.push((frames.thread_name_or_id(), names, count.max(0) as usize));
            }
            let (report, folded) = render(&stacks, steps, cpu_ms, wall_ms);
            std::fs::write(path, report).with_context(|| format!("writing {}", path.display()))?;
            let folded_path = path.with_extension("folded");
            std::fs::write(&folded_path, folded)
                .with_context(|| format!("writing {}", folded_path.display()))?;
            Ok(())
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (path, steps);
            unreachable!("no profile starts off Linux")
        }
    }
}

/// User plus system CPU time of the whole process so far, in seconds.
#[cfg(target_os = "linux")]
fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// A demangled name without its hash suffix (`::h0123...`).
fn short_name(name: &str) -> String {
    match name.rfind("::h") {
        Some(i) if name.len() - i == 19 => name[..i].to_string(),
        _ => name.to_string(),
    }
}

/// The report and the folded stacks of `(thread, stack leaf first, samples)`, over `steps` steps
/// that took `cpu_ms` of the process's CPU time and `wall_ms` of wall-clock time.
fn render(
    stacks: &[(String, Vec<String>, usize)],
    steps: usize,
    cpu_ms: f64,
    wall_ms: f64,
) -> (String, String) {
    let samples: usize = stacks.iter().map(|s| s.2).sum();
    let ms_per_sample = cpu_ms / samples.max(1) as f64;
    let per_step = |n: usize| n as f64 * ms_per_sample / steps.max(1) as f64;
    let mut threads: HashMap<&str, usize> = HashMap::new();
    let mut own: HashMap<(&str, &str), usize> = HashMap::new();
    let mut anywhere: HashMap<(&str, &str), usize> = HashMap::new();
    let mut folded: HashMap<String, usize> = HashMap::new();
    for (thread, names, count) in stacks {
        *threads.entry(thread).or_default() += count;
        let leaf = names.first().map(String::as_str).unwrap_or("?");
        *own.entry((thread, leaf)).or_default() += count;
        let mut seen: Vec<&str> = Vec::new();
        for name in names {
            if !seen.contains(&name.as_str()) {
                seen.push(name);
                *anywhere.entry((thread, name)).or_default() += count;
            }
        }
        let mut line = thread.replace(';', ",");
        for name in names.iter().rev() {
            line.push(';');
            line.push_str(&name.replace(';', ","));
        }
        *folded.entry(line).or_default() += count;
    }
    let mut threads: Vec<_> = threads.into_iter().collect();
    threads.sort_by_key(|t| std::cmp::Reverse(t.1));
    let mut out = String::new();
    let steps_f = steps.max(1) as f64;
    let _ = writeln!(
        out,
        "host profile: {steps} steps, {:.1} ms wall and {:.1} ms CPU per step, {samples} samples \
         ({:.0}/s of CPU time); ms = CPU ms per step\n",
        wall_ms / steps_f,
        cpu_ms / steps_f,
        samples as f64 / (cpu_ms / 1e3).max(1e-9),
    );
    for (thread, total) in &threads {
        let _ = writeln!(
            out,
            "thread {thread}: {total} samples, {:.1} ms",
            per_step(*total)
        );
    }
    for (title, table) in [("self (top of stack)", &own), ("inclusive", &anywhere)] {
        for (thread, total) in threads.iter().take(4) {
            let _ = writeln!(out, "\n== {thread}: {title} ==");
            let mut rows: Vec<_> = table
                .iter()
                .filter(|((t, _), _)| t == thread)
                .map(|((_, name), n)| (*n, *name))
                .collect();
            rows.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
            for (n, name) in rows.into_iter().take(TOP) {
                let share = 100.0 * n as f64 / *total as f64;
                let _ = writeln!(out, "{:8.2} ms {share:5.1}%  {name}", per_step(n));
            }
        }
    }
    let mut lines: Vec<_> = folded.into_iter().collect();
    lines.sort();
    let folded = lines
        .into_iter()
        .map(|(line, n)| format!("{line} {n}\n"))
        .collect();
    (out, folded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_counts_self_and_inclusive_time_per_thread_and_folds_stacks() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let stacks = vec![
            ("main".to_string(), s(&["leaf_a", "mid", "main"]), 3),
            ("main".to_string(), s(&["mid", "main"]), 1),
            ("worker".to_string(), s(&["spin", "loop"]), 2),
        ];
        // 6 samples over 6 ms of CPU time: 1 ms each.
        let (report, folded) = render(&stacks, 1, 6.0, 10.0);
        assert!(report.contains("thread main: 4 samples"));
        assert!(report.contains("thread worker: 2 samples"));
        // `mid` is on top once and on the stack four times.
        let line = |needle: &str, section: &str| {
            let start = report.find(section).unwrap();
            report[start..]
                .lines()
                .find(|l| l.ends_with(needle))
                .unwrap()
                .to_string()
        };
        assert!(line("  mid", "== main: self")
            .trim_start()
            .starts_with("1.00 ms"));
        assert!(line("  mid", "== main: inclusive")
            .trim_start()
            .starts_with("4.00 ms"));
        assert_eq!(
            folded,
            "main;main;mid 1\nmain;main;mid;leaf_a 3\nworker;loop;spin 2\n"
        );
    }

    #[test]
    fn hashes_are_cut_from_names() {
        assert_eq!(
            short_name("burn::x::add::h0123456789abcdef"),
            "burn::x::add"
        );
        assert_eq!(short_name("plain"), "plain");
    }
}
