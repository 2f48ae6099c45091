//! Several EVALs at once (docs/EVALUATION.md, "Several evaluations at once"): a node with more
//! than one CPU runs the tasks of several clients' EVALs at the same time, gives each the
//! result it gets alone, and lets go of an EVAL whose client has left, leaving no pin behind.

use cairn_tests::{stat, thunk};
use std::time::{Duration, Instant};

use cairn_bootcfg::{LogLevel, NodeConfig};
use cairn_object::Handle;
use cairn_tests::serving_node_with;
use cairn_tools::client::Client;
use cairn_tools::qemu::NodeOptions;
use cairn_tools::secure::SecureStream;

/// One Mandelbrot tile inside the set, slow on purpose (`iterations` 256 take about a quarter
/// of a second under TCG): the thunk and its objects. `x` makes each tile a different thunk.
fn slow_tile(mandelbrot: Handle, x: u32, iterations: u32) -> (Handle, Vec<(Handle, Vec<u8>)>) {
    let mode = b"tile".to_vec();
    let params: Vec<u8> =
        [512u32, 512, x, 192, 64, 64, iterations].iter().flat_map(|v| v.to_le_bytes()).collect();
    let (mode_h, params_h) = (Handle::blob(&mode), Handle::blob(&params));
    let mut objects = vec![(mode_h, mode), (params_h, params)];
    let tile = thunk(mandelbrot, &[mode_h, params_h], 2 << 20, &mut objects);
    (tile, objects)
}

#[test]
fn two_cpus_run_two_clients_evals_at_once_and_let_go_of_one_whose_client_left() {
    // Two CPUs run tasks, the boot CPU none: it would take a queued task itself when the other
    // CPUs are slow to wake, and hold new EVALs meanwhile, which is not what this measures.
    let config = NodeConfig { log_level: LogLevel::Info, boot_cpu_tasks: false, ..NodeConfig::default() };
    let (mut node, address) = serving_node_with(NodeOptions { cpus: 3, config, ..NodeOptions::default() });
    let elf = std::fs::read(env!("CARGO_BIN_FILE_CAIRN_TASKS_mandelbrot")).unwrap();
    let mandelbrot = Handle::blob(&elf);
    let mut setup = Client::connect(&address).unwrap();
    setup.upload_missing(&[(mandelbrot, elf)]).unwrap();
    // The third, four times slower, is the one whose client leaves.
    let tiles: Vec<_> = (0..3).map(|i| slow_tile(mandelbrot, 192 + 64 * i, 256 << (i / 2 * 2))).collect();
    for (_, objects) in &tiles {
        setup.upload_missing(objects).unwrap();
    }

    // Two clients at once, each with its own EVAL.
    let started = Instant::now();
    let clients: Vec<_> = tiles[..2]
        .iter()
        .map(|(thunk, _)| {
            let (address, thunk) = (address.clone(), *thunk);
            std::thread::spawn(move || Client::connect(&address).unwrap().eval(thunk).unwrap())
        })
        .collect();
    let together: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let together_s = started.elapsed().as_secs_f64();
    let stats = setup.stats().unwrap();
    // Both EVALs were under way, and their tasks ran, at the same time: one on each CPU.
    assert!(stat(&stats, "evaluations_most_at_once") >= 2, "{stats}");
    assert_eq!(stat(&stats, "tasks_most_at_once"), 2, "{stats}");
    assert_eq!(
        (stat(&stats, "cpu0_tasks"), stat(&stats, "cpu1_tasks"), stat(&stats, "cpu2_tasks")),
        (0, 1, 1),
        "{stats}"
    );

    // Each alone, the memo ignored: the same results.
    let started = Instant::now();
    for ((thunk, _), at_once) in tiles.iter().zip(&together) {
        let alone = setup.eval_fresh(*thunk).unwrap();
        assert_eq!(alone.result, at_once.result);
        assert_eq!((at_once.tasks_run, at_once.memo_hits), (1, 0));
    }
    eprintln!(
        "two tiles at once: {together_s:.2} s ({} us, {} us); one after the other: {:.2} s",
        together[0].micros,
        together[1].micros,
        started.elapsed().as_secs_f64()
    );

    // A client that dies while its EVAL runs (its connection is reset; one that only closes
    // its side is still owed the answer: docs/PROTOCOL.md): the node lets the evaluation go,
    // and every pin it took, and keeps serving.
    let pins_before = stat(&setup.stats().unwrap(), "store_pinned");
    let stream = SecureStream::connect(&address).unwrap();
    let tcp = stream.tcp().try_clone().unwrap();
    let mut leaving = Client::over(stream).unwrap();
    leaving.send_eval(tiles[2].0).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO)).unwrap();
    drop((leaving, tcp));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = setup.stats().unwrap();
        if stat(&stats, "evaluations_let_go") == 1 && stat(&stats, "store_pinned") == pins_before {
            break;
        }
        assert!(Instant::now() < deadline, "the evaluation was not let go, or left pins: {stats}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let again = setup.eval(tiles[0].0).unwrap();
    assert_eq!((again.result, again.memo_hits), (together[0].result, 1));
    node.kill();
}

/// A client waiting for its EVAL is not idle, though no byte moves while the task runs on
/// another CPU and the node serves in full meanwhile (idle connections are closed after
/// `api_idle_s`).
#[test]
fn a_client_waiting_longer_than_the_idle_timeout_for_its_eval_gets_the_answer() {
    let config = NodeConfig { log_level: LogLevel::Info, api_idle_s: 1, ..NodeConfig::default() };
    let (mut node, address) = serving_node_with(NodeOptions { cpus: 2, config, ..NodeOptions::default() });
    let elf = std::fs::read(env!("CARGO_BIN_FILE_CAIRN_TASKS_hostile")).unwrap();
    let hostile = Handle::blob(&elf);
    let mode = Handle::blob(b"loop");
    let mut objects = vec![(hostile, elf)];
    let looping = thunk(hostile, &[mode], 1 << 20, &mut objects);
    let mut client = Client::connect(&address).unwrap();
    client.upload_missing(&objects).unwrap();
    // The loop runs until its 2 s budget stops it: twice the idle timeout.
    let failure = format!("{:#}", client.eval(looping).unwrap_err());
    assert!(failure.contains("timeout"), "{failure}");
    assert!(stat(&client.stats().unwrap(), "connections_idle") == 0);
    node.kill();
}
