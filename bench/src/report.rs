//! Results: JSON, markdown tables and an SVG chart.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles, ms.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    /// Samples.
    pub samples: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Maximum.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

impl Latency {
    /// Percentiles of a µs histogram.
    pub fn from_us(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Latency {
            samples: h.len(),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: h.max() as f64 / 1000.0,
            mean_ms: h.mean() / 1000.0,
        }
    }
}

/// A server process over a measurement.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerUsage {
    /// Process id.
    pub pid: u32,
    /// RSS at the start, KiB.
    pub rss_start_kb: u64,
    /// RSS at the end, KiB.
    pub rss_end_kb: u64,
    /// Peak RSS of the process so far (VmHWM), KiB.
    pub rss_peak_kb: u64,
    /// CPU, percent of one core, over the measurement.
    pub cpu_pct: f64,
}

/// One load measurement (a run, a scenario, or one sweep step).
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadResult {
    /// Free text.
    pub label: String,
    /// Transport.
    pub transport: String,
    /// Gateway nodes.
    pub nodes: usize,
    /// Connections asked for.
    pub connections_target: u64,
    /// Connections established (and joined).
    pub connected: u64,
    /// Connections that failed.
    pub connect_failed: u64,
    /// Seconds the connect phase took.
    pub connect_secs: f64,
    /// Connections per second.
    pub connect_rate: f64,
    /// Members per room.
    pub room_size: u64,
    /// Rooms.
    pub rooms: u64,
    /// Room-events per second asked for.
    pub rate_target: f64,
    /// Room-events per second published successfully.
    pub rate_achieved: f64,
    /// Rooms per publish request.
    pub batch: usize,
    /// Publish requests that failed.
    pub publish_errors: u64,
    /// Publishing time, s.
    pub duration_secs: f64,
    /// Deliveries expected (successful room-events × subscribed members).
    pub expected: u64,
    /// Unique deliveries received.
    pub received: u64,
    /// Duplicate deliveries.
    pub duplicates: u64,
    /// expected − received (never negative).
    pub lost: u64,
    /// lost / expected, percent.
    pub loss_pct: f64,
    /// received / duration.
    pub deliveries_per_sec: f64,
    /// Delivery latency (publish call → receive).
    pub latency: Latency,
    /// Server API round trip of publish requests.
    pub publish_latency: Latency,
    /// Server processes.
    pub servers: Vec<ServerUsage>,
    /// Resident set of the bench workers at the end, KiB.
    pub bench_rss_kb: u64,
    /// CPU of the bench worker processes (the clients), percent of one core, summed.
    pub bench_cpu_pct: f64,
    /// Disconnect events seen by clients.
    pub disconnects: u64,
    /// Error samples.
    pub errors: Vec<String>,
}

/// A number of ms with about three significant digits.
pub fn fmt_ms(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v < 1.0 {
        format!("{v:.3}")
    } else if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// An integer with thin thousands separators (`12,345`).
pub fn fmt_int(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn mib(kb: u64) -> String {
    format!("{:.1}", kb as f64 / 1024.0)
}

/// Markdown table of load results (one row each).
pub fn load_table(rows: &[LoadResult]) -> String {
    let mut s = String::from(
        "| run | transport | nodes | conns | connect/s | events/s (target → sent) | deliveries expected | received | loss | deliveries/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | server CPU % | server RSS MiB | bench CPU % |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let cpu: Vec<String> = r.servers.iter().map(|s| format!("{:.0}", s.cpu_pct)).collect();
        let rss: Vec<String> = r.servers.iter().map(|s| mib(s.rss_end_kb)).collect();
        s.push_str(&format!(
            "| {} | {} | {} | {} | {:.0} | {:.0} → {:.0} | {} | {} | {} ({:.3} %) | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} |\n",
            r.label,
            r.transport,
            r.nodes,
            fmt_int(r.connected),
            r.connect_rate,
            r.rate_target,
            r.rate_achieved,
            fmt_int(r.expected),
            fmt_int(r.received),
            fmt_int(r.lost),
            r.loss_pct,
            fmt_int(r.deliveries_per_sec.round() as u64),
            fmt_ms(r.latency.p50_ms),
            fmt_ms(r.latency.p90_ms),
            fmt_ms(r.latency.p99_ms),
            fmt_ms(r.latency.p999_ms),
            fmt_ms(r.latency.max_ms),
            cpu.join(" / "),
            rss.join(" / "),
            r.bench_cpu_pct,
        ));
    }
    s
}

/// Idle-memory result.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IdleResult {
    /// Transport.
    pub transport: String,
    /// Connections asked for.
    pub connections_target: u64,
    /// Connections established.
    pub connected: u64,
    /// Connect phase, s.
    pub connect_secs: f64,
    /// Connections per second.
    pub connect_rate: f64,
    /// Server RSS before connecting, KiB.
    pub rss_before_kb: u64,
    /// Server RSS with every connection idle, KiB.
    pub rss_after_kb: u64,
    /// (after − before) / connected, bytes.
    pub bytes_per_connection: f64,
    /// Bench workers' RSS per connection, bytes (client side, for reference).
    pub bench_bytes_per_connection: f64,
    /// Server CPU while idle, percent of a core.
    pub idle_cpu_pct: f64,
    /// Errors.
    pub errors: Vec<String>,
}

/// Markdown table of idle-memory results.
pub fn idle_table(rows: &[IdleResult]) -> String {
    let mut s = String::from(
        "| transport | conns | connect/s | server RSS before MiB | after MiB | per connection KB | server idle CPU % | bench RSS per conn KB |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {:.0} | {} | {} | {:.1} | {:.1} | {:.1} |\n",
            r.transport,
            fmt_int(r.connected),
            r.connect_rate,
            mib(r.rss_before_kb),
            mib(r.rss_after_kb),
            r.bytes_per_connection / 1000.0,
            r.idle_cpu_pct,
            r.bench_bytes_per_connection / 1000.0,
        ));
    }
    s
}

/// Reconnect-storm result.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StormResult {
    /// Transport.
    pub transport: String,
    /// Clients connected before the restart.
    pub connected: u64,
    /// How the node was stopped.
    pub signal: String,
    /// Stop signal → process gone, s.
    pub stop_secs: f64,
    /// Process gone → new process ready, s.
    pub start_secs: f64,
    /// Stop signal → every client back with its room live, s (None: not within the bound).
    pub all_back_secs: Option<f64>,
    /// Clients still down when the bound passed.
    pub still_down: i64,
    /// Disconnect events.
    pub disconnects: u64,
    /// Rooms resumed with every missed event.
    pub resumed_ok: u64,
    /// Rooms whose recovery failed.
    pub recovery_failed: u64,
    /// Deliveries over the whole window.
    pub load: LoadResult,
}

/// Markdown table of storm results.
pub fn storm_table(rows: &[StormResult]) -> String {
    let mut s = String::from(
        "| transport | clients | stop | stop s | restart s | all back & recovered s | still down | rooms resumed OK | recovery failed | deliveries expected | received | lost | p99 ms | max ms |\n\
         |---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.transport,
            fmt_int(r.connected),
            r.signal,
            r.stop_secs,
            r.start_secs,
            r.all_back_secs
                .map_or("not within bound".into(), |v| format!("{v:.2}")),
            r.still_down,
            fmt_int(r.resumed_ok),
            fmt_int(r.recovery_failed),
            fmt_int(r.load.expected),
            fmt_int(r.load.received),
            fmt_int(r.load.lost),
            fmt_ms(r.load.latency.p99_ms),
            fmt_ms(r.load.latency.max_ms),
        ));
    }
    s
}

/// A measure before, during and after an attack.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Phases<T> {
    /// Before the attack.
    pub before: T,
    /// While it runs.
    pub during: T,
    /// After it ended.
    pub after: T,
}

/// The legitimate load in one phase.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct LegitPhase {
    /// Length of the phase, s.
    pub secs: f64,
    /// Unique deliveries received.
    pub received: u64,
    /// Delivery latency.
    pub latency: Latency,
    /// Disconnect events the clients saw.
    pub disconnects: u64,
}

/// The legitimate load over one second (or less, at the end).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Second {
    /// End of the second, ms since the start of the measurement.
    pub at_ms: u64,
    /// Unique deliveries received.
    pub received: u64,
    /// 99th percentile of their latency, ms.
    pub p99_ms: f64,
    /// Their highest latency, ms.
    pub max_ms: f64,
}

/// New-client connects over one transport in one phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProbeSummary {
    /// Connects tried.
    pub attempts: u64,
    /// Connects that got a Welcome.
    pub connected: u64,
    /// Shortest connect time, ms.
    pub min_ms: f64,
    /// Median connect time, ms.
    pub median_ms: f64,
    /// Longest connect time, ms.
    pub max_ms: f64,
    /// A few errors, with counts.
    pub errors: Vec<String>,
}

impl ProbeSummary {
    /// Summarises connect times (ms) and errors.
    pub fn of(times_ms: &[f64], errors: &[String]) -> ProbeSummary {
        let mut sorted = times_ms.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = match n {
            0 => 0.0,
            _ if n % 2 == 1 => sorted[n / 2],
            _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        let mut counted: std::collections::BTreeMap<&str, u64> = Default::default();
        for e in errors {
            *counted.entry(e).or_default() += 1;
        }
        ProbeSummary {
            attempts: (n + errors.len()) as u64,
            connected: n as u64,
            min_ms: sorted.first().copied().unwrap_or(0.0),
            median_ms: median,
            max_ms: sorted.last().copied().unwrap_or(0.0),
            errors: counted.iter().take(5).map(|(e, n)| format!("{n}× {e}")).collect(),
        }
    }

    fn cell(&self) -> String {
        match self.connected {
            _ if self.attempts == 0 => "–".into(),
            0 => format!("0/{}", self.attempts),
            1 => format!("1/{}, {} ms", self.attempts, fmt_ms(self.median_ms)),
            n => format!(
                "{n}/{}, {} ({}–{}) ms",
                self.attempts,
                fmt_ms(self.median_ms),
                fmt_ms(self.min_ms),
                fmt_ms(self.max_ms)
            ),
        }
    }
}

/// An attack scenario's result.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AttackResult {
    /// The attack.
    pub kind: String,
    /// Its source address.
    pub source: String,
    /// Attacker connections held at once.
    pub sockets: usize,
    /// Attack length, s.
    pub attack_secs: f64,
    /// Flags the gateway got beyond the bench's own (its limits are the defaults).
    pub gateway_args: Vec<String>,
    /// Transport of the legitimate load.
    pub transport: String,
    /// Legitimate connections established.
    pub connected: u64,
    /// Members per room.
    pub room_size: u64,
    /// Room-events per second asked for.
    pub rate_target: f64,
    /// Room-events per second published successfully.
    pub rate_achieved: f64,
    /// Publish requests that failed.
    pub publish_errors: u64,
    /// Deliveries expected over the whole run.
    pub expected: u64,
    /// Unique deliveries received over the whole run.
    pub received: u64,
    /// expected − received.
    pub lost: u64,
    /// The legitimate load per phase.
    pub legit: Phases<LegitPhase>,
    /// The legitimate load second by second.
    pub legit_seconds: Vec<Second>,
    /// Gateway RSS, KiB: at the attack's start, its peak during the attack, at the end.
    pub rss_kb: Phases<u64>,
    /// Gateway open descriptors, as `rss_kb`.
    pub fds: Phases<u64>,
    /// Gateway CPU per phase, percent of one core.
    pub cpu_pct: Phases<f64>,
    /// CPU of the bench process holding the attacker, publisher and probes, per phase.
    pub bench_cpu_pct: Phases<f64>,
    /// CPU of every process on the machine (gateway, bench, anything else), per phase.
    pub machine_cpu_pct: Phases<f64>,
    /// Logical CPUs of the machine.
    pub cpus: usize,
    /// New WebSocket clients per phase.
    pub new_ws: Phases<ProbeSummary>,
    /// New WebTransport clients per phase.
    pub new_wt: Phases<ProbeSummary>,
    /// What the attacker saw.
    pub attacker: crate::attack::Tally,
    /// Every gateway reading (every 250 ms).
    pub samples: Vec<crate::monitor::Sample>,
    /// Every new-client connect.
    pub probes: Vec<crate::monitor::Probe>,
    /// Error samples.
    pub errors: Vec<String>,
}

/// Markdown tables of an attack: the gateway and legitimate clients per phase, then the
/// attacker's side.
pub fn attack_table(r: &AttackResult) -> String {
    let l = &r.legit;
    let lat = |p: &LegitPhase| {
        format!(
            "{} / {} / {}",
            fmt_ms(p.latency.p50_ms),
            fmt_ms(p.latency.p99_ms),
            fmt_ms(p.latency.max_ms)
        )
    };
    let mut s = format!(
        "{} from {}: {} sockets for {:.0} s; gateway with default limits{}. Legitimate load: \
         {} {} connections, rooms of {}, {:.0} room-events/s ({:.0} sent).\n\n",
        r.kind,
        r.source,
        fmt_int(r.sockets as u64),
        r.attack_secs,
        if r.gateway_args.is_empty() {
            String::new()
        } else {
            format!(" (and {})", r.gateway_args.join(" "))
        },
        fmt_int(r.connected),
        r.transport,
        r.room_size,
        r.rate_target,
        r.rate_achieved,
    );
    s.push_str(
        "| | before | during the attack | after |\n\
         |---|---:|---:|---:|\n",
    );
    s.push_str(&format!(
        "| gateway RSS MiB (at the start / peak / at the end) | {} | {} | {} |\n",
        mib(r.rss_kb.before),
        mib(r.rss_kb.during),
        mib(r.rss_kb.after)
    ));
    s.push_str(&format!(
        "| gateway open fds (at the start / peak / at the end) | {} | {} | {} |\n",
        fmt_int(r.fds.before),
        fmt_int(r.fds.during),
        fmt_int(r.fds.after)
    ));
    s.push_str(&format!(
        "| gateway CPU % | {:.0} | {:.0} | {:.0} |\n",
        r.cpu_pct.before, r.cpu_pct.during, r.cpu_pct.after
    ));
    s.push_str(&format!(
        "| attacker + publisher process CPU % | {:.0} | {:.0} | {:.0} |\n",
        r.bench_cpu_pct.before, r.bench_cpu_pct.during, r.bench_cpu_pct.after
    ));
    s.push_str(&format!(
        "| whole machine CPU % (of {}) | {:.0} | {:.0} | {:.0} |\n",
        r.cpus * 100,
        r.machine_cpu_pct.before,
        r.machine_cpu_pct.during,
        r.machine_cpu_pct.after
    ));
    s.push_str(&format!(
        "| legit deliveries | {} | {} | {} |\n",
        fmt_int(l.before.received),
        fmt_int(l.during.received),
        fmt_int(l.after.received)
    ));
    s.push_str(&format!(
        "| legit latency p50 / p99 / max ms | {} | {} | {} |\n",
        lat(&l.before),
        lat(&l.during),
        lat(&l.after)
    ));
    s.push_str(&format!(
        "| legit disconnects | {} | {} | {} |\n",
        l.before.disconnects, l.during.disconnects, l.after.disconnects
    ));
    s.push_str(&format!(
        "| new WebSocket client: connected/tried, connect median (min–max) | {} | {} | {} |\n",
        r.new_ws.before.cell(),
        r.new_ws.during.cell(),
        r.new_ws.after.cell()
    ));
    s.push_str(&format!(
        "| new WebTransport client: connected/tried, connect median (min–max) | {} | {} | {} |\n",
        r.new_wt.before.cell(),
        r.new_wt.during.cell(),
        r.new_wt.after.cell()
    ));
    let a = &r.attacker;
    s.push_str(&format!(
        "\nLegitimate deliveries: {} expected, {} received, {} lost; {} publish errors.\n\n",
        fmt_int(r.expected),
        fmt_int(r.received),
        fmt_int(r.lost),
        r.publish_errors
    ));
    s.push_str("| attacker | count |\n|---|---:|\n");
    let mut row = |k: &str, v: String| s.push_str(&format!("| {k} | {v} |\n"));
    row("connection attempts", fmt_int(a.attempts));
    row(
        "never connected (refused, failed or timed out)",
        fmt_int(a.failed),
    );
    row("connections opened", fmt_int(a.opened));
    row("closed by the gateway within 1 s", fmt_int(a.refused));
    row("closed by the gateway later", fmt_int(a.closed));
    row("still open when the attack ended", fmt_int(a.open_at_end));
    row("most open at once", fmt_int(a.open_peak));
    if a.refused_after_ms.samples > 0 {
        row(
            "time to refusal, p50 / max ms",
            format!(
                "{} / {}",
                fmt_ms(a.refused_after_ms.p50_ms),
                fmt_ms(a.refused_after_ms.max_ms)
            ),
        );
    }
    if a.held_ms.samples > 0 {
        row(
            "held until closed (the later ones), p50 / max s",
            format!(
                "{:.2} / {:.2}",
                a.held_ms.p50_ms / 1000.0,
                a.held_ms.max_ms / 1000.0
            ),
        );
    }
    if a.datagrams > 0 {
        row("non-QUIC Initial-sized datagrams sent", fmt_int(a.datagrams));
    }
    let mut outcomes: Vec<(&String, &u64)> = a.outcomes.iter().collect();
    outcomes.sort_by(|x, y| y.1.cmp(x.1));
    for (how, n) in outcomes {
        row(&format!("ended: {how}"), fmt_int(*n));
    }
    for (name, p) in [("WebSocket", &r.new_ws), ("WebTransport", &r.new_wt)] {
        for (phase, q) in [("before", &p.before), ("during", &p.during), ("after", &p.after)] {
            if !q.errors.is_empty() {
                s.push_str(&format!(
                    "\nNew {name} clients {phase} the attack failed: {}.\n",
                    q.errors.join("; ")
                ));
            }
        }
    }
    s
}

/// SVG line chart: latency percentiles (log scale) against delivered deliveries/s.
pub fn sweep_svg(title: &str, steps: &[LoadResult], limit_ms: f64) -> String {
    let (w, h) = (860.0, 520.0);
    let (left, right, top, bottom) = (80.0, 170.0, 50.0, 70.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let xmax = steps.iter().map(|s| s.deliveries_per_sec).fold(1.0_f64, f64::max) * 1.05;
    let lat_max = steps.iter().map(|s| s.latency.p999_ms).fold(limit_ms, f64::max);
    let lat_min = steps
        .iter()
        .map(|s| s.latency.p50_ms)
        .filter(|v| *v > 0.0)
        .fold(1.0_f64, f64::min);
    let ylo = 10f64.powf(lat_min.log10().floor());
    let yhi = 10f64.powf(lat_max.log10().ceil());
    let x = |v: f64| left + v / xmax * pw;
    let y = |v: f64| {
        let v = v.max(ylo);
        top + ph - (v.log10() - ylo.log10()) / (yhi.log10() - ylo.log10()) * ph
    };
    let mut s = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="24" font-size="16" text-anchor="middle">{}</text>
"##,
        left + pw / 2.0,
        escape(title)
    );
    // Y grid (decades and 2, 5 in between).
    let mut dec = ylo;
    while dec <= yhi * 1.0001 {
        for m in [1.0, 2.0, 5.0] {
            let v = dec * m;
            if v > yhi * 1.0001 {
                break;
            }
            let yy = y(v);
            let stroke = if m == 1.0 { "#bbb" } else { "#eee" };
            s.push_str(&format!(
                r##"<line x1="{left}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="{stroke}"/>
<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>
"##,
                left + pw,
                left - 6.0,
                yy + 4.0,
                fmt_ms(v)
            ));
        }
        dec *= 10.0;
    }
    // X grid.
    let step = nice_step(xmax / 6.0);
    let mut v = 0.0;
    while v <= xmax {
        let xx = x(v);
        s.push_str(&format!(
            r##"<line x1="{xx:.1}" y1="{top}" x2="{xx:.1}" y2="{:.1}" stroke="#eee"/>
<text x="{xx:.1}" y="{:.1}" text-anchor="middle">{}</text>
"##,
            top + ph,
            top + ph + 18.0,
            fmt_int(v as u64)
        ));
        v += step;
    }
    s.push_str(&format!(
        r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>
<text x="{:.1}" y="{:.1}" text-anchor="middle">deliveries per second (received)</text>
<text x="20" y="{:.1}" text-anchor="middle" transform="rotate(-90 20 {:.1})">delivery latency, ms (log scale)</text>
"##,
        left + pw / 2.0,
        h - 25.0,
        top + ph / 2.0,
        top + ph / 2.0
    ));
    // Limit line.
    let ly = y(limit_ms);
    s.push_str(&format!(
        r##"<line x1="{left}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="#d00" stroke-dasharray="6 4"/>
<text x="{:.1}" y="{:.1}" fill="#d00">p99 limit {} ms</text>
"##,
        left + pw,
        left + pw + 6.0,
        ly + 4.0,
        fmt_ms(limit_ms)
    ));
    type Pick = fn(&LoadResult) -> f64;
    let series: [(&str, &str, Pick); 4] = [
        ("p50", "#1f77b4", |r| r.latency.p50_ms),
        ("p90", "#2ca02c", |r| r.latency.p90_ms),
        ("p99", "#ff7f0e", |r| r.latency.p99_ms),
        ("p99.9", "#9467bd", |r| r.latency.p999_ms),
    ];
    for (i, (name, color, pick)) in series.iter().enumerate() {
        let pts: Vec<String> = steps
            .iter()
            .map(|r| format!("{:.1},{:.1}", x(r.deliveries_per_sec), y(pick(r))))
            .collect();
        s.push_str(&format!(
            r##"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>
"##,
            pts.join(" ")
        ));
        for r in steps {
            s.push_str(&format!(
                r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"><title>{name} {} ms at {} deliveries/s</title></circle>
"##,
                x(r.deliveries_per_sec),
                y(pick(r)),
                fmt_ms(pick(r)),
                fmt_int(r.deliveries_per_sec as u64)
            ));
        }
        let ly = top + 20.0 + i as f64 * 20.0;
        s.push_str(&format!(
            r##"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="2"/>
<text x="{:.1}" y="{:.1}">{name}</text>
"##,
            left + pw + 10.0,
            left + pw + 35.0,
            left + pw + 40.0,
            ly + 4.0
        ));
    }
    s.push_str("</svg>\n");
    s
}

fn nice_step(raw: f64) -> f64 {
    let mag = 10f64.powf(raw.max(1.0).log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if mag * m >= raw {
            return mag * m;
        }
    }
    mag * 10.0
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ms_formatting() {
        assert_eq!(fmt_ms(0.0), "0");
        assert_eq!(fmt_ms(0.4219), "0.422");
        assert_eq!(fmt_ms(4.219), "4.22");
        assert_eq!(fmt_ms(42.19), "42.2");
        assert_eq!(fmt_ms(421.9), "422");
        assert_eq!(fmt_int(0), "0");
        assert_eq!(fmt_int(1234567), "1,234,567");
        assert_eq!(fmt_int(100), "100");
    }

    #[test]
    fn percentiles_from_histogram() {
        let mut h = crate::worker::new_histogram();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap(); // 1..1000 ms
        }
        let l = Latency::from_us(&h);
        assert_eq!(l.samples, 1000);
        assert!((l.p50_ms - 500.0).abs() < 1.0, "{}", l.p50_ms);
        assert!((l.p99_ms - 990.0).abs() < 1.0, "{}", l.p99_ms);
        assert!((l.max_ms - 1000.0).abs() < 1.0, "{}", l.max_ms);
    }

    #[test]
    fn table_rows_carry_percentiles() {
        let r = LoadResult {
            label: "seed".into(),
            transport: "WebSocket".into(),
            nodes: 1,
            connected: 10_000,
            expected: 600_000,
            received: 600_000,
            latency: Latency {
                samples: 1,
                p50_ms: 0.8,
                p90_ms: 1.5,
                p99_ms: 3.25,
                p999_ms: 12.5,
                max_ms: 40.0,
                mean_ms: 1.0,
            },
            ..Default::default()
        };
        let t = load_table(&[r]);
        let row = t.lines().nth(2).unwrap();
        assert!(row.starts_with("| seed | WebSocket | 1 | 10,000 |"), "{row}");
        assert!(row.contains("| 0.800 | 1.50 | 3.25 | 12.5 | 40.0 |"), "{row}");
        assert_eq!(t.lines().count(), 3);
    }

    #[test]
    fn attack_tables_show_each_phase() {
        let mut r = AttackResult {
            kind: "silent-ws".into(),
            source: "127.0.0.2".into(),
            sockets: 300,
            rss_kb: Phases {
                before: 10 * 1024,
                during: 20 * 1024,
                after: 12 * 1024,
            },
            ..Default::default()
        };
        r.new_ws.during = ProbeSummary::of(&[2.0, 4.0, 3.0], &["timed out".into()]);
        r.attacker.outcomes.insert("WebSocket close 3012".into(), 44);
        let t = attack_table(&r);
        assert!(
            t.contains("| gateway RSS MiB (at the start / peak / at the end) | 10.0 | 20.0 | 12.0 |"),
            "{t}"
        );
        assert!(t.contains("| – | 3/4, 3.00 (2.00–4.00) ms | – |"), "{t}");
        let even = ProbeSummary::of(&[2613.0, 6785.0], &[]);
        assert_eq!(
            (even.min_ms, even.median_ms, even.max_ms),
            (2613.0, 4699.0, 6785.0)
        );
        assert!(t.contains("| ended: WebSocket close 3012 | 44 |"), "{t}");
        assert!(t.contains("1× timed out"), "{t}");
    }

    #[test]
    fn svg_is_well_formed_enough() {
        let a = LoadResult {
            deliveries_per_sec: 1000.0,
            latency: Latency {
                p50_ms: 1.0,
                p99_ms: 5.0,
                p999_ms: 9.0,
                ..Default::default()
            },
            ..Default::default()
        };
        let mut b = a.clone();
        b.deliveries_per_sec = 5000.0;
        b.latency.p99_ms = 80.0;
        let svg = sweep_svg("t <x>", &[a, b], 50.0);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("t &lt;x&gt;"));
        assert_eq!(svg.matches("<polyline").count(), 4);
    }
}
