//! The Cairn kernel binary: brings up the machine, then hands over to the mode the node
//! configuration asks for. Logic lives in the pure crates beside this one (docs/ARCHITECTURE.md).

#![no_std]
#![no_main]

extern crate alloc;

mod arch;
mod boot_config;
mod drivers;
mod entropy;
mod jobs;
mod memory;
mod net;
mod selftest;
mod task;
mod trace;

use bootloader_api::BootInfo;
use cairn_bootcfg::{Mode, NodeConfig};
use cairn_proto::session::Work;
use drivers::qemu_exit::{self, Status};
use net::busy::{SERVING, Serving};
use net::evaluations::Origin;

bootloader_api::entry_point!(kernel_main, config = &boot_config::BOOTLOADER_CONFIG);

fn kernel_main(boot_info: &'static mut BootInfo) -> ! {
    arch::clock::mark_entry();
    drivers::serial::init();
    let simd = arch::cpu::enable_simd();
    arch::gdt::init();
    arch::trap::init();

    let memory = match memory::init(boot_info) {
        Ok(report) => report,
        Err(e) => {
            println!("cairn: memory setup failed: {e}");
            qemu_exit::exit(Status::Failure);
        }
    };
    // The config is read before the logger exists (it sets the level), so its errors go
    // straight to the console; it needs the heap for its error messages.
    let config = match boot_config::node_config(boot_info) {
        Ok(config) => config,
        Err(e) => {
            println!("cairn: bad node configuration: {e}");
            qemu_exit::exit(Status::Failure);
        }
    };
    // The image's configuration is only the default: a config disk or fw_cfg may replace it
    // (docs/CLOUD.md). A source that is there but wrong stops the node: never half configured.
    let config = match boot_config::with_outside(config) {
        Ok((config, sources)) => {
            println!("cairn: config from {sources}");
            config
        }
        Err(e) => {
            println!("cairn: bad node configuration: {e}");
            qemu_exit::exit(Status::Failure);
        }
    };
    drivers::serial::init_logger(config.log_level);
    arch::pic::init();
    arch::clock::init();
    let hardening = arch::user::init();
    x86_64::instructions::interrupts::enable();

    log::info!(
        "cpu: sse on, xsave={} avx={} avx512={}, blake3 path {}; tsc {} kHz{}",
        simd.xsave,
        simd.avx,
        simd.avx512,
        arch::cpu::blake3_path(&simd),
        arch::clock::tsc_khz(),
        if arch::cpu::has_invariant_tsc() { " (invariant)" } else { "" }
    );
    log::info!(
        "memory: {} MiB usable in {} regions, heap {} MiB, {} free frames",
        memory.usable_bytes >> 20,
        memory.regions,
        memory.heap_bytes >> 20,
        memory.free_frames
    );
    let on = |b: bool| if b { "on" } else { "off (the CPU lacks it)" };
    log::info!(
        "tasks: ring 3 with SYSCALL, RDTSC and FSGSBASE off, CPUID {}; UMIP {}, SMEP {}, SMAP {}, TSC_AUX {}",
        if arch::user::cpuid_faulting() {
            "faulting (fixed answer)"
        } else {
            "NOT faulting: tasks see the host CPUID"
        },
        on(hardening.umip),
        on(hardening.smep),
        on(hardening.smap),
        if hardening.tsc_aux { "fixed at 0" } else { "absent" }
    );
    choose_blake3();
    match arch::smp::start(boot_info) {
        Ok(others) => {
            net::ahead::start();
            log::info!(
                "smp: {} CPUs online ({} run tasks); the others run tasks, hash uploads and compute keystreams",
                others + 1,
                arch::smp::task_cpus_other_than_boot() + 1
            )
        }
        Err(why) => log::info!("smp: no other CPU: {why}"),
    }
    log::info!("mode: {}", config.mode.name());

    let status = run(&config, &memory);
    qemu_exit::exit(status);
}

/// Measures the `blake3` crate's SIMD path against the shift-rotate AVX2 one (fast under
/// emulation, where byte shuffles are slow) and names large blobs with the faster, if both give
/// the same digest.
fn choose_blake3() {
    let sample: alloc::vec::Vec<u8> = (0..128 * 1024u32).map(|i| (i % 251) as u8).collect();
    match cairn_object::hash::compare(&sample, arch::clock::rdtsc) {
        None => log::info!("blake3: no AVX2; the blake3 crate's own path names blobs"),
        Some((_, _, false)) => {
            log::error!("blake3: the two implementations disagree; keeping the blake3 crate")
        }
        Some((crate_cycles, wide_cycles, true)) => {
            let mib_s = |cycles: u64| {
                let us = (cycles * 1000 / arch::clock::tsc_khz().max(1)).max(1);
                (sample.len() as u64 * 1_000_000 / us) >> 20
            };
            let wide = cairn_object::hash::use_shift_rotate_avx2(wide_cycles < crate_cycles);
            log::info!(
                "blake3: crate path {} MiB/s, shift-rotate avx2 {} MiB/s; using {}",
                mib_s(crate_cycles),
                mib_s(wide_cycles),
                if wide { "shift-rotate avx2" } else { "the crate path" }
            );
        }
    }
}

fn run(config: &NodeConfig, memory: &memory::MemoryReport) -> Status {
    let ready = || {
        println!(
            "cairn: ready boot_ms={} mem_mib={}",
            arch::clock::micros_since_boot() / 1000,
            memory.usable_bytes >> 20
        )
    };
    task::ahead::set_boot_cpu_tasks(config.boot_cpu_tasks);
    if !config.boot_cpu_tasks {
        log::info!("smp: the boot CPU runs no tasks while others can (boot_cpu_tasks = no)");
    }
    match config.mode {
        Mode::Job => {
            ready();
            jobs::demo::run()
        }
        Mode::TaskChecks => {
            ready();
            jobs::task_checks::run()
        }
        Mode::Bench => {
            ready();
            jobs::bench::run()
        }
        Mode::Fuzz => {
            ready();
            jobs::fuzz::run(config)
        }
        Mode::Serve => {
            ready();
            serve(config)
        }
        Mode::Selftest => selftest::run_all(),
        Mode::FaultTest => {
            ready();
            selftest::deliberate_fault()
        }
    }
}

/// The node's keys, from QEMU's fw_cfg file or an outside configuration (never from the image:
/// docs/SECURITY.md, docs/CLOUD.md), from exactly one of them.
fn load_keys() -> Result<cairn_bootcfg::NodeKeys, alloc::string::String> {
    use drivers::fw_cfg::{FwCfgError, file};
    let name = cairn_bootcfg::FW_CFG_NAME;
    let outside = boot_config::outside_keys();
    let bytes = match (file(name), outside) {
        (Err(FwCfgError::NoDevice | FwCfgError::NoFile), Some((_, keys))) => return Ok(keys),
        (Ok(_), Some((source, _))) => {
            return Err(alloc::format!(
                "node keys come from both fw_cfg {name} and the {}: give them once",
                source.name()
            ));
        }
        (bytes, None) => bytes,
        (Err(e), Some(_)) => Err(e),
    };
    let bytes = bytes.map_err(|e| match e {
        FwCfgError::NoDevice => {
            alloc::format!("no node keys: this machine has no fw_cfg to give them (file {name})")
        }
        FwCfgError::NoFile => alloc::format!("no node keys: fw_cfg has no file {name}"),
        FwCfgError::TooLarge(size) => {
            alloc::format!("node keys: fw_cfg file {name} is {size} bytes, too large")
        }
    })?;
    cairn_bootcfg::NodeKeys::parse(&bytes).map_err(|e| alloc::format!("{e} (fw_cfg file {name})"))
}

/// The store on `disk`: opened (recovered), or made on a blank disk.
fn open_store(mut disk: drivers::blk::Disk) -> Result<memory::objects::DiskObjects, alloc::string::String> {
    use cairn_store::DiskStore;
    let len_mib = cairn_store::Device::len(&disk) >> 20;
    let started = arch::clock::micros_since_boot();
    if DiskStore::is_blank(&mut disk).map_err(|e| alloc::format!("{e}"))? {
        let seed = entropy::seed().ok_or("no randomness for the store's id")?;
        let store = DiskStore::format(disk, seed[..16].try_into().expect("16 bytes"))
            .map_err(|e| alloc::format!("{e}"))?;
        println!("cairn: store disk {len_mib} MiB, new");
        return Ok(store);
    }
    let (store, recovery) = DiskStore::open(disk).map_err(|e| alloc::format!("{e}"))?;
    let stats = store.stats();
    println!(
        "cairn: store disk {len_mib} MiB, {} objects ({} bytes), recovered in {} ms{}: {} records read{}{}",
        stats.objects,
        stats.object_bytes,
        (arch::clock::micros_since_boot() - started) / 1000,
        if recovery.from_checkpoint { " from a checkpoint" } else { "" },
        recovery.records_scanned,
        match recovery.damaged_objects {
            0 => alloc::string::String::new(),
            n => alloc::format!(", {n} damaged objects not held"),
        },
        match recovery.dropped_records {
            0 => alloc::string::String::new(),
            n => alloc::format!(", {n} records of a commit cut short left out"),
        },
    );
    Ok(store)
}

/// Says why the node serves no API, and idles.
fn refuse_api(why: &str) -> ! {
    println!("cairn: api off: {why}");
    loop {
        x86_64::instructions::interrupts::enable_and_hlt();
    }
}

/// Brings up the network (DHCP) and serves the node API until the VM is stopped.
fn serve(config: &NodeConfig) -> Status {
    // No API without keys and entropy (docs/SECURITY.md): a node that cannot authenticate its
    // clients or make keys nobody can guess serves nobody, and says why.
    match entropy::init() {
        Ok(sources) => println!("cairn: entropy {}", sources.describe()),
        Err(sources) => refuse_api(&alloc::format!(
            "no entropy source gave a seed ({}): the node needs RDSEED, RDRAND or a virtio-rng device",
            sources.describe()
        )),
    }
    let mut network = match net::Network::start(0, config.ip) {
        Ok(network) => network,
        Err(e) => {
            log::warn!("network: {}; serving without one", e.0);
            loop {
                x86_64::instructions::interrupts::enable_and_hlt();
            }
        }
    };
    // A cloud's metadata server, asked once the network is up (docs/CLOUD.md): over everything
    // else; unreachable or wrong, the node serves nothing rather than run half configured.
    let outside;
    let config = if config.metadata == cairn_bootcfg::Metadata::Gce {
        let source = cairn_bootcfg::external::Source::GceMetadata;
        let text = net::metadata::gce(&mut network)
            .unwrap_or_else(|why| refuse_api(&alloc::format!("{}: {why}", source.name())));
        outside = boot_config::from_metadata(config, &text, source)
            .unwrap_or_else(|why| refuse_api(&alloc::format!("{}: {why}", source.name())));
        println!("cairn: config from {} too", source.name());
        &outside
    } else {
        config
    };
    match load_keys() {
        Ok(keys) => {
            println!(
                "cairn: keys node={} clients={} peers={}",
                keys.secret.public(),
                keys.clients.len(),
                keys.peers.len()
            );
            net::set_keys(keys);
        }
        Err(why) => refuse_api(&why),
    }
    // The cluster network: a second card with a static address (docs/CLUSTER.md).
    let mut cluster = config.cluster_ip.and_then(|ip| match net::Network::start(1, Some(ip)) {
        Ok(cluster) => Some(cluster),
        Err(e) => {
            log::warn!("cluster network: {}; serving without one", e.0);
            None
        }
    });
    // The store's disk (docs/STORE.md): one that cannot be used stops the API, rather than let
    // the node serve from memory while its operator believes objects are kept.
    let disk = match drivers::blk::find(config.disk_without_flush) {
        Some(drivers::blk::Found::Usable(disk)) => {
            if !disk.flushes {
                println!(
                    "cairn: store disk cannot flush (disk_without_flush = yes): its data is NOT durable; a crash may lose or tear what the node acknowledged"
                );
            }
            match open_store(*disk) {
                Ok(store) => Some(store),
                Err(why) => refuse_api(&alloc::format!("the store's disk: {why}")),
            }
        }
        Some(drivers::blk::Found::Unusable(why)) => refuse_api(&alloc::format!("the store's disk: {why}")),
        None => None,
    };
    match arch::clock::read_wall_clock() {
        Some(ms) => log::info!("clock: RTC says {} s since the Unix epoch", ms / 1000),
        None => log::warn!("clock: the RTC gave no valid time; journals record uptime instead"),
    }
    trace::init();
    let (mut ev, _procedures) = jobs::node_evaluator(memory::heap::usage().1 as u64 / 2, &config.ceilings);
    if let Some(disk) = disk {
        ev.store.attach_disk(disk);
    }
    let mut id_source = alloc::vec::Vec::from(network.device.mac());
    if let Some(cluster) = &cluster {
        id_source.extend_from_slice(&cluster.device.mac());
    }
    let node_id = *blake3::hash(&id_source).as_bytes();
    let cluster_text = match (&cluster, config.cluster_ip) {
        (Some(_), Some(ip)) => {
            let [a, b, c, d] = ip.address;
            let peers: alloc::vec::Vec<alloc::string::String> =
                config.peers.iter().map(|[a, b, c, d]| alloc::format!("{a}.{b}.{c}.{d}")).collect();
            alloc::format!("cluster_ip={a}.{b}.{c}.{d}\npeers={}\n", peers.join(","))
        }
        _ => alloc::string::String::new(),
    };
    let api = net::api::Api::new(&mut network, node_id, config, cluster_text.clone());
    let cluster_api = cluster.as_mut().map(|c| net::api::Api::new(c, node_id, config, cluster_text));
    *SERVING.lock() = Some(Serving { network, cluster, api, cluster_api });
    let mut jobs = net::jobs::Jobs::default();
    jobs.peers = config.peers.clone();
    jobs.cluster_ip = config.cluster_ip.map(|ip| ip.address);
    let mut evaluations = net::evaluations::Evaluations::default();
    let mut coordination: Option<net::coordinate::Coordination> = None;
    let mut evictions = trace::Evictions::default();
    let mut neighbors = SERVING
        .lock()
        .as_mut()
        .and_then(|s| s.cluster.as_mut())
        .map(|cluster| net::neighbors::Neighbors::new(cluster, &config.peers));
    let started = arch::clock::micros_since_boot();
    let mut announced = false;
    // The boot CPU's time halted while EVALs waited on other CPUs, for STATS' idle_ms.
    let mut halted_waiting_us = 0u64;
    log::info!("serving; stop the VM to shut down");
    loop {
        let mut guard = SERVING.lock();
        let s = guard.as_mut().expect("set above");
        s.network.device.rearm();
        let configured = s.network.poll();
        if let Some(cluster) = s.cluster.as_mut() {
            cluster.device.rearm();
            cluster.poll();
            if let Some(neighbors) = neighbors.as_mut() {
                neighbors.keep(cluster);
            }
        }
        if configured && !announced {
            announced = true;
            if let Some((cidr, gateway)) = s.network.address {
                let gw = gateway.map(|g| alloc::format!("{g}")).unwrap_or_else(|| "none".into());
                let how = if s.network.uses_dhcp() {
                    alloc::format!("dhcp_ms={}", (arch::clock::micros_since_boot() - started) / 1000)
                } else {
                    "static".into()
                };
                println!("cairn: net ip={cidr} gateway={gw} {how} api_port={}", net::api::PORT);
            }
            if let Some((cidr, _)) = s.cluster.as_ref().and_then(|c| c.address) {
                println!("cairn: cluster ip={cidr} peers={}", config.peers.len());
            }
        }
        s.api.idle_us += core::mem::take(&mut halted_waiting_us);
        let mut busy = s.api.poll(&mut s.network, &mut ev, &mut jobs);
        if let (Some(cluster_api), Some(cluster)) = (s.cluster_api.as_mut(), s.cluster.as_mut()) {
            busy |= cluster_api.poll(cluster, &mut ev, &mut jobs);
        }
        evaluations.let_go_unwanted(
            &mut ev,
            &s.api,
            s.cluster_api.as_ref(),
            coordination.as_ref().map(|c| c.job),
        );
        drop(guard);
        busy |= run_queued(&mut jobs, &mut ev, &mut evaluations, &mut coordination);
        busy |= coordinate(&mut coordination, &mut ev, &mut evaluations);
        // Tasks finished on the other CPUs from here on wake the loop (see below).
        let finished_before = task::ahead::finished();
        let (answer, moved) = evaluations.step(&mut ev);
        busy |= moved;
        // What tasks and evaluations stored this round reaches the disk durably (what clients
        // stored already has: they hear STORED only after).
        let synced = ev.store.sync();
        if let Err(e) = &synced {
            log::warn!("store: {e}");
        }
        evictions.note(&ev);
        let mut guard = SERVING.lock();
        let s = guard.as_mut().expect("set above");
        if let Some(finished) = answer {
            let answer = durable(&synced, &ev, finished.answer);
            match finished.origin {
                Origin::Api { queued, on_cluster } => {
                    let api = if on_cluster { s.cluster_api.as_mut() } else { Some(&mut s.api) };
                    if let Some(api) = api {
                        api.deliver(queued, answer);
                    }
                }
                Origin::Coordinator { job } => {
                    if let Some(c) = coordination.as_mut().filter(|c| c.job == job) {
                        c.evaluated(answer);
                    }
                }
            }
        }
        if busy {
            // Replies go out on this round rather than the next tick.
            s.network.poll();
            if let Some(cluster) = s.cluster.as_mut() {
                cluster.poll();
            }
        } else if !evaluations.is_empty() {
            // Every EVAL under way waits for a task on another CPU.
            drop(guard);
            halted_waiting_us += wait_for_tasks(&mut ev, finished_before, coordination.is_none());
        } else if !arch::smp::help() {
            // The timer (100 Hz) or a device interrupt wakes us to poll again.
            let halted = arch::clock::micros_since_boot();
            x86_64::instructions::interrupts::enable_and_hlt();
            s.api.idle_us += arch::clock::micros_since_boot() - halted;
        }
    }
}

/// Has the boot CPU do something useful while every EVAL under way waits for a task on
/// another CPU: run a queued task no other CPU took, or else halt until a task finishes (its
/// CPU wakes this one), a packet arrives, or the timer ticks. `seen` is what
/// `task::ahead::finished` said before the walks were stepped: a task finished since then has
/// the loop step them again. While the node coordinates a job (`steal` false) it runs no task
/// itself: a task can take a second, and every peer's next request would wait for it.
/// Returns how long it halted.
fn wait_for_tasks(ev: &mut jobs::NodeEvaluator, seen: u64, steal: bool) -> u64 {
    use task::ahead::{Queued, finished};
    let since = arch::clock::micros_since_boot();
    let waited = || arch::clock::micros_since_boot().saturating_sub(since);
    loop {
        if finished() != seen {
            return 0;
        }
        let queued = if steal { ev.executor.run_a_queued_task(STEAL_AFTER_US) } else { Queued::None };
        match queued {
            Queued::Ran => return 0,
            // Until the oldest task is old enough, watching the clock only: the queue's lock is
            // the other CPUs' too. Back to the loop now and then, to serve the network.
            Queued::Young { in_us } if waited() < 1000 => {
                let until = arch::clock::micros_since_boot() + in_us;
                while finished() == seen && arch::clock::micros_since_boot() < until {
                    core::hint::spin_loop();
                }
            }
            Queued::Young { .. } => return 0,
            // A moment's look before halting: a task may be about to end.
            Queued::None if waited() < arch::smp::SPIN_BEFORE_HALT_US => core::hint::spin_loop(),
            Queued::None => break,
        }
    }
    x86_64::instructions::interrupts::disable();
    arch::smp::boot_cpu_sleeping();
    let halted = arch::clock::micros_since_boot();
    if finished() == seen {
        x86_64::instructions::interrupts::enable_and_hlt();
    } else {
        x86_64::instructions::interrupts::enable();
    }
    arch::smp::boot_cpu_awake();
    arch::clock::micros_since_boot().saturating_sub(halted)
}

/// How long a task waits in the queue before the boot CPU, with every EVAL waiting, runs it
/// itself: long enough for an idle CPU to wake and take it.
const STEAL_AFTER_US: u64 = 200;

/// `answer`, unless what the work made could not be made durable: then an error. A disk that
/// could not make it so (it failed now, or earlier, and then nothing was written: memo entries
/// among them) turns the answer into an error: a client must not be told what a restart would
/// forget (docs/STORE.md).
fn durable(
    synced: &Result<(), cairn_object::store::StoreError>,
    ev: &jobs::NodeEvaluator,
    answer: cairn_proto::Message,
) -> cairn_proto::Message {
    if synced.is_ok() && !ev.store.disk_failed() {
        return answer;
    }
    cairn_proto::Message::Error {
        code: cairn_proto::ErrorCode::Internal,
        message: "the store's disk failed: what this work made cannot be kept".into(),
    }
}

/// Runs the work both APIs queued, answering each on the API it came from; true if there was
/// any. An EVAL begins a walk in `evaluations` (the loop steps it); a PIN runs at once; other
/// work waits while any EVAL is under way. The node keeps answering HELLO, HAVE and GET
/// meanwhile (`net::busy`): FETCH and RELOCATE serve them while they wait on the peer. Jobs with
/// IO hold the networks, since their evaluation uses them.
fn run_queued(
    jobs: &mut net::jobs::Jobs,
    ev: &mut jobs::NodeEvaluator,
    evaluations: &mut net::evaluations::Evaluations,
    coordination: &mut Option<net::coordinate::Coordination>,
) -> bool {
    let mut any = false;
    loop {
        let mut guard = SERVING.lock();
        let s = guard.as_mut().expect("set by serve");
        if !evaluations.has_room() {
            return any;
        }
        let other_work = evaluations.is_empty();
        // Work that needs the node quiet, first in either API's queue, holds up new EVALs from
        // both: otherwise a peer that always has an EVAL under way would keep a client's GC
        // (and everything behind it) waiting forever, or the other way round.
        let quiet_wanted =
            s.api.next_needs_quiet() || s.cluster_api.as_mut().is_some_and(|a| a.next_needs_quiet());
        if !other_work && quiet_wanted {
            return any;
        }
        let (queued, on_cluster) = match s.api.next_work(other_work) {
            Some(queued) => (queued, false),
            None => match s.cluster_api.as_mut().and_then(|a| a.next_work(other_work)) {
                Some(queued) => (queued, true),
                None => return any,
            },
        };
        any = true;
        let answer = match queued.work.clone() {
            Work::Eval { handle, fresh } => {
                match evaluations.begin(ev, (handle, fresh), Origin::Api { queued, on_cluster }) {
                    None => continue,
                    Some(refused) => {
                        let api = if on_cluster { s.cluster_api.as_mut() } else { Some(&mut s.api) };
                        if let (Some(api), Origin::Api { queued, .. }) = (api, refused.origin) {
                            api.deliver(queued, refused.answer);
                        }
                        continue;
                    }
                }
            }
            Work::Coordinate { root, placement, verify, spread, seed } => {
                let begun = match (coordination.is_some(), jobs.cluster_ip, s.cluster.is_some()) {
                    (true, ..) => Err((
                        queued,
                        cairn_proto::Message::Error {
                            code: cairn_proto::ErrorCode::Busy,
                            message: "this node is coordinating another job; ask again when it ends".into(),
                        },
                    )),
                    (false, Some(own), true) => net::coordinate::Coordination::begin(
                        ev,
                        (root, placement, verify, spread, seed),
                        (own, &jobs.peers),
                        queued,
                        on_cluster,
                    ),
                    (false, ..) => Err((
                        queued,
                        cairn_proto::Message::Error {
                            code: cairn_proto::ErrorCode::Unexpected,
                            message: "this node is not in a cluster (no cluster_ip)".into(),
                        },
                    )),
                };
                match begun {
                    Ok(c) => *coordination = Some(c),
                    Err((queued, answer)) => {
                        let api = if on_cluster { s.cluster_api.as_mut() } else { Some(&mut s.api) };
                        if let Some(api) = api {
                            api.deliver(queued, answer);
                        }
                    }
                }
                continue;
            }
            Work::Scrub => {
                // Reads serve the others between objects, as during an EVAL.
                drop(guard);
                let scrubbed = net::store_admin::scrub(&ev.store);
                guard = SERVING.lock();
                // Then what was damaged is fetched again from the peers that have it.
                let Serving { network, cluster, api, cluster_api } = guard.as_mut().expect("set by serve");
                let mut others = serve_others(network, api, cluster_api);
                net::store_admin::restore(scrubbed, jobs, cluster.as_mut(), &mut others, ev)
            }
            Work::Pin { handle, pinned } => net::store_admin::pin(&ev.store, handle, pinned),
            Work::Gc { goal } => net::store_admin::collect(ev, goal),
            work @ (Work::Fetch { .. } | Work::Relocate { .. }) => {
                let Serving { network, cluster, api, cluster_api } = s;
                let mut others = serve_others(network, api, cluster_api);
                jobs.run_with_peer(work, cluster.as_mut(), &mut others, ev)
            }
            work => jobs.run(work, &mut s.network, ev),
        };
        // What the work made is durable before its answer names it.
        let synced = ev.store.sync();
        if let Err(e) = &synced {
            log::warn!("store: {e}");
        }
        let answer = durable(&synced, ev, answer);
        let s = guard.as_mut().expect("set by serve");
        let api = if on_cluster { s.cluster_api.as_mut().expect("work came from it") } else { &mut s.api };
        api.deliver(queued, answer);
    }
}

/// Moves the job this node coordinates along, if there is one, and answers it once it ends;
/// true if anything moved.
fn coordinate(
    coordination: &mut Option<net::coordinate::Coordination>,
    ev: &mut jobs::NodeEvaluator,
    evaluations: &mut net::evaluations::Evaluations,
) -> bool {
    let Some(c) = coordination.as_mut() else { return false };
    let mut guard = SERVING.lock();
    let Serving { network, cluster, api, cluster_api } = guard.as_mut().expect("set by serve");
    let Some(cluster) = cluster.as_mut() else { return false };
    // A job whose client has gone is let go of, as an EVAL's is: nobody would get its answer,
    // and it would keep the cluster busy and this node refusing other jobs.
    let wanted = match (c.on_cluster, cluster_api.as_ref()) {
        (false, _) => api.wanted(&c.asked),
        (true, Some(cluster_api)) => cluster_api.wanted(&c.asked),
        (true, None) => false,
    };
    if !wanted {
        coordination.take().expect("matched above").abandon(cluster);
        return true;
    }
    let (moved, answer) = {
        let mut others = serve_others(network, api, cluster_api);
        c.step(cluster, &mut others, ev, evaluations)
    };
    let Some(answer) = answer else { return moved };
    let c = coordination.take().expect("matched above");
    trace::record(cairn_proto::trace::Span {
        handle: Some(c.root),
        ok: matches!(answer, cairn_proto::Message::Coordinated { .. }),
        count: c.tasks() as u64,
        ..trace::since(cairn_proto::trace::SpanKind::Coordinate, c.began_us)
    });
    // The result is durable here before the client is told of it.
    let synced = ev.store.sync();
    let answer = durable(&synced, ev, answer);
    let api = if c.on_cluster { cluster_api.as_mut() } else { Some(api) };
    if let Some(api) = api {
        api.deliver(c.asked, answer);
    }
    true
}

/// What the node answers meanwhile when work waits on a peer (`net::peer::ServeOthers`).
fn serve_others<'a>(
    network: &'a mut net::Network,
    api: &'a mut net::api::Api,
    cluster_api: &'a mut Option<net::api::Api>,
) -> impl FnMut(&mut net::Network, &memory::objects::NodeStore) + 'a {
    move |cluster, store| {
        network.device.rearm();
        network.poll();
        api.poll_busy(network, store);
        if let Some(cluster_api) = cluster_api.as_mut() {
            cluster_api.poll_busy(cluster, store);
        }
        network.poll();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    jobs::fuzz::note_panic();
    arch::trap::fatal_panic(info)
}
