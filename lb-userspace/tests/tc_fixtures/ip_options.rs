//! IPv4 options (IHL > 5) do not confuse the translation.
use crate::{
    common::{
        LOCAL_DNS, LOCAL_WEB, NODE_IP, NP_DNS_LOCAL, NP_WEB_LOCAL, NP_WEB_REMOTE, REMOTE_WEB,
        client, expect, expect_snat, fixture, sa,
    },
    family::Family,
    harness::{Hook, TC_ACT_OK, TC_ACT_REDIRECT},
    packet::{ACK, Pkt, SYN},
};

#[test]
fn ip_options_do_not_confuse_the_translation() {
    let f = Family::V4;
    let Some(fx) = fixture(f) else { return };
    // Router alert (IHL 6).
    let router_alert = [0x94, 0x04, 0x00, 0x00];
    let frontend = sa(NODE_IP, NP_WEB_LOCAL);
    let syn = Pkt::tcp(f, client(40000), frontend, SYN).options(&router_alert);
    expect(
        &fx,
        "SYN with options (DNAT)",
        Hook::Ingress,
        &syn.frame(),
        TC_ACT_OK,
        &syn.clone().to(LOCAL_WEB).frame(),
    );
    let synack = Pkt::tcp(f, LOCAL_WEB, client(40000), SYN | ACK).options(&router_alert);
    expect(
        &fx,
        "SYN-ACK with options",
        Hook::Egress,
        &synack.frame(),
        TC_ACT_OK,
        &synack.clone().from(frontend).frame(),
    );

    // A timestamp option padded to 12 bytes (IHL 8), with SNAT.
    let timestamp = [0x44, 0x0c, 0x05, 0x00, 0, 0, 0, 0, 0, 0, 0, 0];
    let frontend = sa(NODE_IP, NP_WEB_REMOTE);
    let syn = Pkt::tcp(f, client(40001), frontend, SYN).options(&timestamp);
    let (snat, _) = expect_snat(&fx, "SYN with options (SNAT)", &syn, REMOTE_WEB);
    let synack = Pkt::tcp(f, REMOTE_WEB, snat, SYN | ACK).options(&timestamp);
    expect(
        &fx,
        "SYN-ACK with options (SNAT)",
        Hook::Ingress,
        &synack.frame(),
        TC_ACT_REDIRECT,
        &synack
            .clone()
            .from(frontend)
            .to(client(40001))
            .routed()
            .frame(),
    );

    // UDP with the longest options (IHL 15).
    let nops = [[0x01u8; 39].as_slice(), &[0x00]].concat();
    let frontend = sa(NODE_IP, NP_DNS_LOCAL);
    let query = Pkt::udp(f, client(40002), frontend, b"with options").options(&nops);
    expect(
        &fx,
        "UDP with 40 bytes of options",
        Hook::Ingress,
        &query.frame(),
        TC_ACT_OK,
        &query.clone().to(LOCAL_DNS).frame(),
    );
}
