//! The config's terminal size (docker's ConsoleSize): the main session's pty is opened at that
//! size, so the program sees it from its first byte; a resize before a held start updates it.

use super::*;

fn tty_main(rows: u16, cols: u16) -> SessionSpec {
    SessionSpec {
        tty: true,
        rows,
        cols,
        ..session("m", "/bin/m")
    }
}

#[test]
fn the_main_session_starts_at_the_configured_size() {
    paused(async {
        let g = Guest::started(&spec(tty_main(40, 132), vec![session("side", "/bin/s")])).await;
        let plans = g.procs.plans();
        let sizes: Vec<_> = plans
            .iter()
            .map(|p| (p.process.tty, p.process.rows, p.process.cols))
            .collect();
        assert_eq!(sizes, [(true, 40, 132), (false, 0, 0)]);
        assert!(
            !g.procs.calls().iter().any(|c| c.starts_with("resize")),
            "set when the pty is made, not by a resize after the start"
        );
    });
}

#[test]
fn a_resize_before_the_first_attach_is_the_size_it_starts_at() {
    paused(async {
        let mut main = tty_main(40, 132);
        main.attach = true;
        let mut g = Guest::started(&spec(main, vec![])).await;
        g.control(Control::Resize {
            session: MAIN,
            rows: 50,
            cols: 200,
        });
        g.send(Control::Release { session: MAIN }).await;
        let plans = g.procs.plans();
        assert_eq!(
            plans
                .iter()
                .map(|p| (p.process.rows, p.process.cols))
                .collect::<Vec<_>>(),
            [(50, 200)]
        );
    });
}
