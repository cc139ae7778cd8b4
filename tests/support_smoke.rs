//! The test harness itself: real processes start, answer and stop.
mod support;
use redis_relay::resp::Reply;

#[test]
fn redis_and_nutcracker_start_and_route() {
    let a = support::RedisServer::start(&[]);
    let b = support::RedisServer::start(&[]);
    let proxy = support::Nutcracker::start(&[a.addr(), b.addr()]);
    let mut c = proxy.client();
    for i in 0..200 {
        c.cmd(&["SET", &format!("k{i}"), "v"]);
    }
    let na = a.client().cmd(&["DBSIZE"]).as_int().unwrap();
    let nb = b.client().cmd(&["DBSIZE"]).as_int().unwrap();
    assert_eq!(na + nb, 200);
    assert!(
        na > 0 && nb > 0,
        "keys spread over both backends: {na} / {nb}"
    );
    assert_eq!(c.cmd(&["GET", "k7"]), Reply::Bulk(Some("v".into())));
}
