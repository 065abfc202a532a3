use super::{record::*, *};
use crate::{
    config::Config,
    failover::{BackendId, GroupId, Routing},
    registry::{Binding, Transport},
};

fn routing() -> Routing {
    let config = Config::from_toml(
        "[[backends]]\nname = \"cm1\"\naddress = \"10.0.0.11:5060\"\n[[groups]]\nname = \"default\"\nbackends = [\"cm1\"]\n",
        "test",
    )
    .unwrap();
    Routing::from_config(&config)
}

fn binding(port: u16) -> Binding {
    Binding {
        aor: format!("sip:{port}@example.net"),
        contact: format!("sip:{port}@192.0.2.7:{port}"),
        flow: Flow {
            transport: Transport::Udp,
            peer: format!("192.0.2.7:{port}").parse().unwrap(),
            local: "10.0.0.100:5060".parse().unwrap(),
            connection: None,
        },
        call_id: format!("call-{port}"),
        cseq: 7,
        last_via: Some(1),
        credentials: None,
        group: GroupId(0),
        backend: BackendId(0),
        backend_granted: 3600,
        backend_valid_until_ms: 3_600_000,
        phone_expires_at_ms: 120_000,
        last_seen_ms: 1_000,
        kernel: None,
    }
}

#[test]
fn times_cross_between_nodes_in_unix_time() {
    // Node 1 booted 500 s before node 2: the same instant is 500 s more on its clock.
    let unix = 1_795_600_000_000;
    let (n1, n2) = (WallClock::at(900_000, unix), WallClock::at(400_000, unix));
    assert_eq!(n2.to_mono(n1.to_unix(960_000)), 460_000);
    assert_eq!(n1.to_mono(n1.to_unix(5)), 5);
    assert_eq!(n2.to_mono(0), 0, "before this node's clock began: clamped");
}

#[test]
fn a_record_round_trips_and_garbage_is_not_one() {
    let routing = routing();
    let clock = WallClock::at(1_000, 1_795_600_000_000);
    let saved = SavedBinding::of("dev:SEP1", &binding(5062), &routing, |t| clock.to_unix(t)).unwrap();
    let entry = decode(Some("n1".into()), Some("1795600015000".into()), Some(encode_data(&saved))).unwrap();
    assert_eq!((entry.owner.as_str(), entry.lease_until_ms), ("n1", 1_795_600_015_000));
    let (device, back) = entry.binding.into_binding(&routing, |t| clock.to_mono(t)).unwrap();
    assert_eq!((device.as_str(), back), ("dev:SEP1", binding(5062)));
    assert_eq!(key("dev:SEP1"), "regedge:b:{dev:SEP1}", "one hash slot per record");
    assert!(decode(Some("n1".into()), Some("soon".into()), Some(encode_data(&saved))).is_none());
    assert!(decode(Some("n1".into()), Some("1".into()), Some("{".into())).is_none());
    assert!(decode(None, None, None).is_none());
    let mut tcp = binding(5063);
    tcp.flow.transport = Transport::Tcp;
    assert!(SavedBinding::of("dev:SEP2", &tcp, &routing, |t| t).is_none(), "a TCP flow dies with its node");
}

#[test]
fn the_directory_follows_each_scan() {
    let routing = routing();
    let entry = |port| DirectoryEntry {
        owner: "n1".into(),
        lease_until_ms: 1,
        binding: SavedBinding::of(&format!("dev:{port}"), &binding(port), &routing, |t| t).unwrap(),
    };
    let directory = Directory::default();
    directory.replace(vec![entry(5062), entry(5063)]);
    assert_eq!(directory.len(), 2);
    let flow = binding(5063).flow;
    assert_eq!(directory.by_flow(&flow).unwrap().binding.device, "dev:5063");
    directory.replace(vec![entry(5062)]);
    assert!(directory.by_flow(&flow).is_none() && directory.get("dev:5063").is_none(), "gone from the store");
    directory.forget("dev:5062");
    assert!(directory.is_empty());
}

#[test]
fn every_node_derives_the_same_token_key_from_the_secret() {
    let key = token_key_from_secret("0123456789abcdef-shared");
    assert_eq!(key, token_key_from_secret("0123456789abcdef-shared"));
    assert_ne!(key, token_key_from_secret("0123456789abcdef-sharee"));
    // Fixed across builds and platforms (FNV-1a + SplitMix64), so nodes of different
    // versions still verify each other's tokens.
    assert_eq!(key, 0x091c_2d65_c98e_f5a5, "computed by an independent implementation of the same steps");
}

#[test]
fn a_link_counts_adoptions_and_remembers_hand_overs_once() {
    let link = ClusterLink::new("n2", std::time::Duration::from_secs(6));
    link.adopted("dev:a", Adoption::Sighted);
    assert!(link.is_takeover("dev:a"));
    link.took_over("dev:a");
    assert!(!link.is_takeover("dev:a"));
    link.hand_over("dev:b");
    assert!(link.was_handed_over("dev:b") && !link.was_handed_over("dev:b"));
    assert_eq!((link.stats.adopted(Adoption::Sighted), link.stats.adopted(Adoption::Swept)), (1, 0));
    assert_eq!(link.lease_ms, 6_000);
}
