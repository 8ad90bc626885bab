//! Any sequence of hostile messages, replays, early timers and link failures against a victim
//! node inside a small honest cluster; the victim must stay bounded and the cluster recover.
//! See `gossip/tests/hostile/mod.rs`.
//!
//! Two known weaknesses are masked so the fuzzer looks for new ones; set `HOSTILE_KNOWN=1` to
//! unmask them (messages claiming the victim's own id; forged future sequence numbers).
#![no_main]

#[path = "../../gossip/tests/hostile/mod.rs"]
mod hostile;

#[global_allocator]
static ALLOC: hostile::CountingAlloc = hostile::CountingAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (mut scenario, ops) = hostile::Scenario::from_fuzz(data);
    if std::env::var_os("HOSTILE_KNOWN").is_some() {
        scenario.check_censored = true;
    } else {
        scenario.self_spoof = false;
    }
    scenario.run(&ops);
});
