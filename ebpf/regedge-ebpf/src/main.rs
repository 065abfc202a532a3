#![no_std]
#![no_main]
//! regedge's XDP fast path: answers UDP keepalives to the configured SIP listeners with
//! XDP_TX and hands everything else to the network stack with XDP_PASS, counted by reason.
//!
//! - STUN Binding Request            → Binding Success Response (`stun.rs`)
//! - CRLF keepalive                  → absorbed, nothing sent (XDP_DROP, counted as a reply)
//! - OPTIONS addressed to the proxy  → 200 OK (`options.rs`)
//! - REGISTER refresh of a binding in `BINDINGS`, Cisco backup probe → 200 OK (`register.rs`)
//! - SCCP KeepAlive on a registered phone's TCP socket → KeepAliveAck (`sccp.rs`, a separate
//!   `sk_skb` stream-verdict program, `regedge_sccp_keepalive`)
//!
//! Each reply is built in a per-CPU scratch buffer and written over the request by
//! `frame::emit_reply`, so every reply takes the same resize/checksum path.

mod csum;
mod frame;
mod maps;
mod options;
mod register;
mod sccp;
mod stun;
mod text;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use regedge_common::{
    PassReason, ReplyKind,
    maps::{ANSWER_CRLF, ANSWER_OPTIONS, ANSWER_REGISTER, ANSWER_STUN, AbsorbedRefresh},
    sip::MAX_PAYLOAD,
};

#[xdp]
pub fn regedge_xdp(ctx: XdpContext) -> u32 {
    match try_regedge_xdp(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            maps::count_pass(reason);
            xdp_action::XDP_PASS
        }
    }
}

fn try_regedge_xdp(ctx: &XdpContext) -> Result<u32, PassReason> {
    let udp = frame::parse_udp(ctx)?;
    let answers = maps::listener_answers(&udp).ok_or(PassReason::NotListener)?;
    let plen = udp.payload_len;

    if frame::is_crlf_keepalive(ctx, &udp) {
        if answers & ANSWER_CRLF == 0 {
            return Err(PassReason::NotKeepalive);
        }
        maps::count_reply(ReplyKind::Crlf);
        return Ok(xdp_action::XDP_DROP);
    }
    let head = frame::payload_head(ctx, &udp).ok_or(PassReason::NotKeepalive)?;
    let kind = if stun::is_binding_request(&head, plen) && answers & ANSWER_STUN != 0 {
        ReplyKind::Stun
    } else if head == *b"OPTIONS " && answers & ANSWER_OPTIONS != 0 {
        ReplyKind::Options
    } else if head == *b"REGISTER" && answers & ANSWER_REGISTER != 0 {
        ReplyKind::Register
    } else {
        return Err(PassReason::NotKeepalive);
    };
    if plen > MAX_PAYLOAD {
        return Err(PassReason::TooBig);
    }
    // One reply budget per source address for whatever the kernel may answer (before the
    // work of judging it): over it, userspace decides at its own pace.
    if !maps::admit_source(&udp.saddr) {
        return Err(PassReason::RateLimited);
    }
    let scratch = maps::scratch().ok_or(PassReason::HelperFailed)?;
    frame::load_payload(ctx, &udp, scratch)?;
    if kind == ReplyKind::Register {
        let answer = register::answer(ctx.ctx, &udp, scratch, plen)?;
        frame::emit_reply(ctx, &udp, scratch, answer.len)?;
        if let Some(c) = answer.commit {
            if let Some(entry) = maps::binding(c.call_id_key) {
                unsafe {
                    (*entry).cseq = c.cseq;
                    (*entry).last_seen_ms = c.now_ms;
                }
            }
            maps::push_absorbed(&AbsorbedRefresh {
                call_id_key: c.call_id_key,
                seen_ms: c.now_ms,
                cseq: c.cseq,
                grant: c.grant,
            });
        }
        maps::count_reply(answer.kind);
        return Ok(xdp_action::XDP_TX);
    }
    let reply_len = match kind {
        ReplyKind::Stun => stun::build_reply(scratch, &udp)?,
        _ => options::build_reply(scratch, plen)?,
    };
    frame::emit_reply(ctx, &udp, scratch, reply_len)?;
    maps::count_reply(kind);
    Ok(xdp_action::XDP_TX)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
