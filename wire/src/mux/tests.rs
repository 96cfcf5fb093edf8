use super::*;

/// Two senders in the same state: one frames with `write_next`, straight from its ring
/// buffer, the other with `poll_transmit` + `write_message`. The bytes on the line must be
/// the same, with chunks that wrap around the ring and control records in between.
#[test]
fn write_next_frames_exactly_what_poll_transmit_would() {
    let key = StreamKey::new(1, StreamKind::Stdout);
    let mut fast = Streams::new(Role::Guest, StreamConfig::default());
    let mut generic = Streams::new(Role::Guest, StreamConfig::default());
    let mut x = 0x9e3779b97f4a7c15u64;
    let mut frames = 0;
    for round in 0..60 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = (x % 40_000) as usize + 1;
        let bytes: Vec<u8> = (0..len).map(|i| (x >> (i % 56)) as u8).collect();
        for s in [&mut fast, &mut generic] {
            assert_eq!(s.open_out(key).write(&bytes), len);
            if round % 7 == 3 {
                s.send_control(&Control::Log {
                    level: crate::LogLevel::Info,
                    message: format!("round {round}"),
                })
                .unwrap();
            }
            if round == 59 {
                s.open_out(key).close();
            }
        }
        loop {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let more = fast.write_next(&mut a);
            let generic_more = generic
                .poll_transmit()
                .map(|m| crate::write_message(&m, &mut b));
            assert_eq!(more, generic_more.is_some(), "round {round}");
            assert_eq!(a, b, "round {round}");
            if !more {
                break;
            }
            frames += 1;
        }
        // The peer takes half of what it was sent and grants more: the ring's head moves
        // and keeps unacknowledged bytes, so later chunks start mid-buffer and wrap.
        for s in [&mut fast, &mut generic] {
            let o = s.out(key).unwrap();
            let upto = (o.acked() + o.end()) / 2;
            for k in [key, StreamKey::CONTROL] {
                let upto = if k == key {
                    upto
                } else {
                    s.out(k).unwrap().end()
                };
                s.on_message(Message::Ack {
                    key: k,
                    upto,
                    limit: upto + (1 << 20),
                })
                .unwrap();
            }
        }
    }
    assert!(frames > 60, "{frames} frames");
}

fn pump(a: &mut Streams, b: &mut Streams) -> Vec<Inbound> {
    let mut got = Vec::new();
    loop {
        let mut moved = false;
        while let Some(m) = a.poll_transmit() {
            moved = true;
            got.push(b.on_message(m).unwrap());
        }
        while let Some(m) = b.poll_transmit() {
            moved = true;
            a.on_message(m).unwrap();
        }
        if !moved {
            return got;
        }
    }
}

#[test]
fn round_robin_interleaves_sessions() {
    let cfg = StreamConfig {
        max_chunk: 4,
        ..Default::default()
    };
    let mut guest = Streams::new(Role::Guest, cfg.clone());
    let a = StreamKey::new(1, StreamKind::Stdout);
    let b = StreamKey::new(2, StreamKind::Stdout);
    guest.open_out(a).write(&[b'a'; 12]);
    guest.open_out(b).write(&[b'b'; 4]);
    let order: Vec<StreamKey> = std::iter::from_fn(|| guest.poll_transmit())
        .map(|m| match m {
            Message::Data { key, .. } => key,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(order, vec![a, b, a, a]);
}

#[test]
fn control_records_arrive_in_order_and_data_is_released_by_the_app() {
    let mut guest = Streams::new(Role::Guest, StreamConfig::default());
    let mut server = Streams::new(Role::Appliance, StreamConfig::default());
    let out = StreamKey::new(5, StreamKind::Stdout);
    guest.open_out(out).write(b"hello");
    guest
        .send_control(&Control::Exited {
            session: 5,
            exit_code: 137,
            signal: Some(9),
        })
        .unwrap();
    let got = pump(&mut guest, &mut server);
    assert!(got.contains(&Inbound::Control(vec![Control::Exited {
        session: 5,
        exit_code: 137,
        signal: Some(9)
    }])));
    assert!(got.contains(&Inbound::Data {
        key: out,
        bytes: b"hello".to_vec(),
        fin: false
    }));
    assert_eq!(
        guest.out(out).unwrap().buffered(),
        5,
        "not acked until released"
    );
    server.release(out, 5);
    pump(&mut guest, &mut server);
    assert_eq!(guest.out(out).unwrap().buffered(), 0);
}

#[test]
fn refuses_streams_in_the_wrong_direction_and_rewinds_a_lost_start() {
    let mut server = Streams::new(Role::Appliance, StreamConfig::default());
    let stdin = StreamKey::new(1, StreamKind::Stdin);
    let data = |key, seq| Message::Data {
        key,
        seq,
        fin: false,
        bytes: b"x".to_vec(),
    };
    assert_eq!(
        server.on_message(data(stdin, 0)),
        Err(MuxError::WrongDirection {
            kind: StreamKind::Stdin
        })
    );
    let stdout = StreamKey::new(1, StreamKind::Stdout);
    assert_eq!(server.on_message(data(stdout, 7)), Ok(Inbound::Nothing));
    assert_eq!(
        server.poll_transmit(),
        Some(Message::Rewind {
            key: stdout,
            from: 0
        })
    );
    // An ack for a stream this side never had changes nothing: no stream, nothing to send.
    while server.poll_transmit().is_some() {}
    assert_eq!(
        server.on_message(Message::Ack {
            key: stdin,
            upto: 1,
            limit: 1
        }),
        Ok(Inbound::Nothing)
    );
    assert!(server.out(stdin).is_none());
    assert_eq!(server.poll_transmit(), None);
}

#[test]
fn stream_count_is_bounded() {
    let cfg = StreamConfig {
        max_in_streams: 4,
        ..Default::default()
    };
    let mut server = Streams::new(Role::Appliance, cfg);
    let mut result = Ok(Inbound::Nothing);
    for session in 1..=10 {
        result = server.on_message(Message::Data {
            key: StreamKey::new(session, StreamKind::Stdout),
            seq: 0,
            fin: false,
            bytes: vec![1],
        });
        if result.is_err() {
            break;
        }
    }
    assert_eq!(result, Err(MuxError::TooManyStreams(4)));
}

/// A receiver whose store is full rolls back what it could not keep: nothing is acknowledged,
/// no rewind makes the sender resend at line speed, and the sender's retransmission timer
/// delivers the same bytes again once per timeout, until the store takes them.
#[test]
fn rolled_back_data_and_control_come_again_on_the_senders_timer() {
    let cfg = StreamConfig {
        max_chunk: 4,
        rto_ms: 100,
        ..Default::default()
    };
    let mut guest = Streams::new(Role::Guest, cfg.clone());
    let mut server = Streams::new(Role::Appliance, cfg);
    let out = StreamKey::new(1, StreamKind::Stdout);
    guest.open_out(out).write(b"abcdefgh");
    guest.open_out(out).close();
    let exited = Control::Exited {
        session: 1,
        exit_code: 0,
        signal: None,
    };
    guest.send_control(&exited).unwrap();

    // The store is full: everything delivered is rolled back, data to 0 and control to 0.
    let refused = std::cell::Cell::new(0);
    let transmit = |guest: &mut Streams, server: &mut Streams, full: bool| {
        let mut data = Vec::new();
        let mut records = Vec::new();
        while let Some(m) = guest.poll_transmit() {
            match server.on_message(m).unwrap() {
                Inbound::Data { key, bytes, fin } => {
                    let at = server.in_stream(key).unwrap().released();
                    if full {
                        server.roll_back(key, at);
                        refused.set(refused.get() + 1);
                    } else {
                        data.extend_from_slice(&bytes);
                        server.release(key, bytes.len() as u64);
                        if fin {
                            data.extend_from_slice(b"<fin>");
                        }
                    }
                }
                Inbound::Control(_) if full => server.roll_back(StreamKey::CONTROL, 0),
                Inbound::Control(r) => records.extend(r),
                _ => {}
            }
        }
        while let Some(m) = server.poll_transmit() {
            assert!(
                !matches!(m, Message::Rewind { .. }),
                "a rollback asks for no rewind"
            );
            guest.on_message(m).unwrap();
        }
        (data, records)
    };
    assert_eq!(transmit(&mut guest, &mut server, true), (vec![], vec![]));
    assert_eq!(
        refused.get(),
        1,
        "only the first chunk reaches the store; the rest are dropped"
    );
    assert_eq!(guest.out(out).unwrap().buffered(), 8, "nothing acked");
    // Nothing is sent again until the timer fires.
    guest.on_tick(50);
    assert_eq!(transmit(&mut guest, &mut server, true), (vec![], vec![]));
    guest.on_tick(150);
    guest.on_tick(260);
    assert_eq!(transmit(&mut guest, &mut server, true), (vec![], vec![]));
    // Space is back: the next retransmission is taken whole, once.
    guest.on_tick(400);
    guest.on_tick(520);
    let (data, records) = transmit(&mut guest, &mut server, false);
    assert_eq!(data, b"abcdefgh<fin>");
    assert_eq!(records, vec![exited]);
    assert!(guest.out(out).unwrap().is_finished());
}

/// Ten sessions streaming to a peer that never acknowledges: together their outgoing streams
/// hold no more than `out_total` (a writer that keeps asking gets nothing more), each one gets
/// a share (none is shut out by the others), and their buffers' memory follows what they hold.
/// Once the peer acknowledges, output resumes and every byte arrives in order.
#[test]
fn ten_streams_never_hold_more_than_the_global_bound_and_resume_on_acks() {
    let cfg = StreamConfig::default();
    let bound = cfg.out_total;
    let mut guest = Streams::new(Role::Guest, cfg.clone());
    let mut server = Streams::new(
        Role::Appliance,
        StreamConfig {
            in_window: 4 << 20,
            ..cfg.clone()
        },
    );
    let keys: Vec<StreamKey> = (1..=10)
        .map(|s| StreamKey::new(s, StreamKind::Stdout))
        .collect();
    // Each stream's bytes name their stream, so a mix-up would show.
    let block = |k: StreamKey, n: usize| vec![k.session as u8; n];
    let fill = |guest: &mut Streams| {
        for _ in 0..100 {
            for &k in &keys {
                guest.open_out(k);
                let room = guest.writable(k);
                assert_eq!(
                    guest.write_out(k, &block(k, 64 * 1024)),
                    room.min(64 * 1024)
                );
            }
        }
    };
    fill(&mut guest);
    let (held, allocated) = guest.out_data_held();
    // Shares of the budget are whole bytes: up to one byte per stream of it may go unused.
    assert!(
        held <= bound && held + keys.len() >= bound,
        "{held} of {bound}"
    );
    for &k in &keys {
        let b = guest.out(k).unwrap().buffered();
        assert!(b >= bound / 20, "stream {k:?} got only {b} bytes");
        assert_eq!(guest.writable(k), 0);
    }
    assert!(allocated <= bound + 2 * keys.len() * crate::stream::SEGMENT);

    // Everything goes on the line; the server takes it but acknowledges nothing yet.
    let mut received: BTreeMap<StreamKey, Vec<u8>> = BTreeMap::new();
    let mut deliver = |guest: &mut Streams, server: &mut Streams, ack: bool| {
        while let Some(m) = guest.poll_transmit() {
            if let Inbound::Data { key, bytes, .. } = server.on_message(m).unwrap() {
                if ack {
                    server.release(key, bytes.len() as u64);
                }
                received.entry(key).or_default().extend_from_slice(&bytes);
            }
        }
    };
    deliver(&mut guest, &mut server, false);
    fill(&mut guest);
    assert_eq!(
        guest.out_data_held().0,
        held,
        "sent but unacked still counts"
    );

    // The peer acknowledges what it holds: the streams have room again and output resumes.
    for &k in &keys {
        let n = server.in_stream(k).unwrap().received() - server.in_stream(k).unwrap().released();
        server.release(k, n);
    }
    while let Some(m) = server.poll_transmit() {
        guest.on_message(m).unwrap();
    }
    assert!(guest.out_data_held().0 < held, "acked bytes are freed");
    for &k in &keys {
        assert!(guest.writable(k) > 0, "{k:?} has room again");
    }
    for round in 0..20 {
        fill(&mut guest);
        assert!(guest.out_data_held().0 <= bound, "round {round}");
        deliver(&mut guest, &mut server, true);
        while let Some(m) = server.poll_transmit() {
            guest.on_message(m).unwrap();
        }
    }
    for _ in 0..10 {
        deliver(&mut guest, &mut server, true);
        while let Some(m) = server.poll_transmit() {
            guest.on_message(m).unwrap();
        }
    }
    assert_eq!(guest.out_data_held(), (0, 0), "all acked, all freed");
    for &k in &keys {
        let got = &received[&k];
        assert!(
            got.len() > 2 * bound / keys.len(),
            "{k:?}: {} bytes",
            got.len()
        );
        assert!(got.iter().all(|&b| b == k.session as u8), "{k:?} mixed up");
    }
}
