//! End-to-end: the admin API and `regedge ctl` against a running regedge with a sipp
//! fleet registered through it to two Kamailio registrars (`edge_lab`): listing and
//! looking up bindings (by device, AOR and flow, a page at a time), the bearer token,
//! POST-only mutations, `/ready`, draining cm1 (its phones leave it at their next refresh,
//! seen in regedge's counts and in Kamailio's `ul.dump`), enabling it again (they come
//! back), and removing a binding (gone here and de-registered upstream).

use std::{collections::BTreeSet, time::Duration};

use regedge_tests::{
    edge_lab::{EdgeConfig, EdgeLab},
    privilege::require_peers,
    sipp::{FleetOpts, user_mac, user_name, user_names},
};

const PHONES: u32 = 20;
const FIRST: u32 = 300_000;
const TOKEN: &str = "e2e-admin-token-0123456789";

#[test]
fn admin_api_and_ctl_list_look_up_drain_enable_and_remove() {
    let test = "admin_api_and_ctl_list_look_up_drain_enable_and_remove";
    if !require_peers(test, &["sipp"]) {
        return;
    }
    let started = std::time::Instant::now();
    let config = EdgeConfig { admin_token: Some(TOKEN.to_owned()), ..EdgeConfig::default() };
    let lab = EdgeLab::start(test, &config);
    let admin = lab.admin();

    // The load balancer's view: /live needs no token, the rest does.
    assert_eq!(admin.get_with("/live", None).status, 200);
    assert_eq!(admin.get_with("/ready", None).status, 401, "/ready without the token");
    assert_eq!(admin.get_with("/ready", Some("not-the-token-at-all")).status, 401);
    let ready = admin.get("/ready");
    assert_eq!((ready.status, &ready.body["ready"]), (200, &serde_json::json!(true)), "{:?}", ready.body);
    let ctl_ready = admin.ctl(&["ready"]);
    assert!(ctl_ready.ok() && ctl_ready.stdout.starts_with("ready ("), "{ctl_ready:?}");

    // Phones refreshing every second for the whole test.
    let opts = FleetOpts {
        users: PHONES,
        first_user: FIRST,
        expires: 120,
        refreshes: 22,
        refresh_interval: Duration::from_secs(1),
        rate: 200,
        timeout: Duration::from_secs(55),
        ..FleetOpts::default()
    };
    let fleet = lab.spawn_fleet(&opts);
    let phones = u64::from(PHONES);
    lab.wait_for("every phone registered on cm1", Duration::from_secs(15), || admin.bindings_on("cm1") == phones);

    // Listing: sorted by device, a page at a time, with the total.
    let all = admin.get("/bindings?limit=1000");
    assert_eq!(all.body["total"].as_u64(), Some(phones), "{:?}", all.body);
    let devices: Vec<String> =
        all.body["bindings"].as_array().unwrap().iter().map(|b| b["device"].as_str().unwrap().to_owned()).collect();
    let mut sorted = devices.clone();
    sorted.sort();
    assert_eq!(devices, sorted, "stable order");
    let expected: BTreeSet<String> = (FIRST..FIRST + PHONES).map(|n| format!("dev:SEP{}", user_mac(n))).collect();
    assert_eq!(devices.iter().cloned().collect::<BTreeSet<_>>(), expected);
    let page = admin.ctl(&["--json", "bindings", "--limit", "5", "--offset", "5"]).json();
    let paged: Vec<&str> = page["bindings"].as_array().unwrap().iter().map(|b| b["device"].as_str().unwrap()).collect();
    assert_eq!(paged, devices[5..10].iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(page["total"].as_u64(), Some(phones));
    let table = admin.ctl(&["bindings", "--limit", "5", "--offset", "5"]);
    assert!(table.ok(), "{table:?}");
    assert!(table.stdout.starts_with("DEVICE") && table.stdout.ends_with("6-10 of 20 bindings\n"), "{}", table.stdout);
    assert_eq!(table.stdout.lines().count(), 7, "header, five rows, the count: {}", table.stdout);

    // Look-ups by device, AOR and flow.
    let n = FIRST + 7;
    let mac = user_mac(n);
    let by_device = admin.ctl(&["--json", "bindings", "--device", &format!("SEP{mac}")]).json();
    assert_eq!(by_device["total"].as_u64(), Some(1), "{by_device}");
    let binding = &by_device["bindings"][0];
    let aor = format!("sip:{}@{}", user_name(n), lab.edge.ip());
    assert_eq!(binding["aor"].as_str(), Some(aor.as_str()));
    assert_eq!((binding["group"].as_str(), binding["backend"].as_str()), (Some("default"), Some("cm1")));
    assert_eq!(binding["flow"]["transport"].as_str(), Some("udp"));
    assert_eq!(binding["flow"]["local"].as_str(), Some(lab.edge.to_string().as_str()));
    let phone_expires_in = binding["phone_expires_in"].as_i64().unwrap();
    assert!((0..=30).contains(&phone_expires_in), "granted phone_expires: {binding}");
    let backend_expires_in = binding["backend_expires_in"].as_i64().unwrap();
    assert!((300..=600).contains(&backend_expires_in), "backend_expires: {binding}");
    let by_aor = admin.ctl(&["--json", "bindings", "--aor", &aor]).json();
    assert_eq!(by_aor["bindings"][0]["device"].as_str(), Some(format!("dev:SEP{mac}").as_str()));
    // One sipp socket serves every phone: one flow carries them all.
    let flow = binding["flow"]["peer"].as_str().unwrap().to_owned();
    let by_flow = admin.ctl(&["--json", "bindings", "--flow", &format!("udp:{flow}"), "--limit", "3"]).json();
    assert_eq!((by_flow["total"].as_u64(), by_flow["bindings"].as_array().unwrap().len()), (Some(phones), 3));
    let elsewhere = admin.ctl(&["--json", "bindings", "--flow", "192.0.2.1:5060"]).json();
    assert_eq!(elsewhere["total"].as_u64(), Some(0));
    let bad = admin.get("/bindings?limit=zero");
    assert_eq!(bad.status, 400);
    assert!(bad.error().unwrap().contains("limit"), "{:?}", bad.body);

    // Backends and groups.
    let backends = admin.ctl(&["backends"]);
    assert!(backends.ok(), "{backends:?}");
    let cm1_row = backends.stdout.lines().find(|l| l.starts_with("cm1 ")).expect("a cm1 row").to_owned();
    assert!(cm1_row.contains(" up ") && cm1_row.contains(" 20 "), "{}", backends.stdout);
    let groups = admin.ctl(&["--json", "groups"]).json();
    assert_eq!(groups[0]["backends"], serde_json::json!(["cm1", "cm2"]));
    assert_eq!(groups[0]["active"].as_str(), Some("cm1"));

    // Mutations: POST only, with the token.
    let get_drain = admin.get("/backends/cm1/drain");
    assert_eq!(get_drain.status, 405, "{:?}", get_drain.body);
    assert_eq!(admin.post_with("/backends/cm1/drain", None).status, 401);
    assert_eq!(admin.post_with("/backends/nope/drain", Some(TOKEN)).status, 404);
    assert_eq!(admin.bindings_on("cm1"), phones, "nothing moved yet");

    // Drain cm1: every phone leaves it at its next refresh, and cm1 forgets them.
    let drain = admin.ctl(&["drain", "cm1"]);
    assert!(drain.ok() && drain.stdout == "cm1: draining\n", "{drain:?}");
    assert_eq!(admin.ctl(&["--json", "groups"]).json()[0]["active"].as_str(), Some("cm2"));
    let moved = lab.wait_for("every phone on cm2 after the drain", Duration::from_secs(10), || {
        admin.bindings_on("cm1") == 0 && admin.bindings_on("cm2") == phones
    });
    let aors = user_names(FIRST, PHONES);
    lab.wait_for("cm2 holds every phone, cm1 none (ul.dump)", Duration::from_secs(10), || {
        lab.cm2.registered_aors().into_iter().collect::<BTreeSet<_>>() == aors && lab.cm1.contacts().is_empty()
    });
    let metrics = lab.metrics();
    assert_eq!(metrics.value("regedge_backend_bindings", &[("backend", "cm1")]), 0);
    assert_eq!(metrics.value("regedge_backend_bindings", &[("backend", "cm2")]), phones);
    assert_eq!(metrics.value("regedge_bindings", &[("protocol", "sip")]), phones);
    assert_eq!(metrics.value("regedge_failovers_total", &[("group", "default")]), phones, "a drain is a failover");

    // Enable it: they come back at their next refresh, and leave cm2.
    let enable = admin.ctl(&["enable", "cm1"]);
    assert!(enable.ok() && enable.stdout == "cm1: up\n", "{enable:?}");
    let back = lab.wait_for("every phone back on cm1", Duration::from_secs(10), || {
        admin.bindings_on("cm1") == phones && admin.bindings_on("cm2") == 0
    });
    lab.wait_for("cm1 holds every phone again, cm2 none (ul.dump)", Duration::from_secs(10), || {
        lab.cm1.registered_aors().into_iter().collect::<BTreeSet<_>>() == aors && lab.cm2.contacts().is_empty()
    });

    // The phones saw nothing of it.
    let summary = fleet.wait();
    assert!(summary.all_ok(PHONES), "{test}: the fleet failed: {summary:#?}\n{}", lab.log());
    assert_eq!(summary.unexpected + summary.timeouts, 0, "{summary:#?}");

    // Remove one binding: gone here, de-registered at cm1 (the phones stopped refreshing).
    let device = format!("dev:SEP{mac}");
    let removed = admin.ctl(&["remove", &device]);
    assert!(removed.ok() && removed.stdout.starts_with(&format!("removed {device} ")), "{removed:?}");
    assert_eq!(admin.get("/bindings").body["total"].as_u64(), Some(phones - 1));
    lab.wait_for("the removed phone de-registered at cm1", Duration::from_secs(5), || {
        let at_cm1: BTreeSet<String> = lab.cm1.registered_aors().into_iter().collect();
        at_cm1.len() == PHONES as usize - 1 && !at_cm1.contains(&user_name(n))
    });
    let again = admin.ctl(&["remove", &device]);
    assert_eq!(again.status, Some(1), "{again:?}");
    assert!(again.stderr.contains("404"), "{again:?}");
    assert_eq!(admin.get("/bindings/x/remove").status, 405);
    eprintln!(
        "{test}: {PHONES} phones; drained cm1 → all on cm2 in {moved:?}; enabled → all back in {back:?}; \
         whole test {:?}",
        started.elapsed()
    );
}
