//! Cumulative stream updates against the simulated kernel, which models
//! 6.1's atomic replace: level switches and step-backs in one transition,
//! the refusals that protect other live patches, boot, the journal's stream
//! fields, crash recovery, `ksplice uname` and the versioned JSON.

use std::fs;
use std::path::PathBuf;

use client::error::Error;
use client::ops::{self, Event, Targets};
use client::report::{self, UnameField};
use client::state::{Phase, State};
use client::{exit, Sys};
use manifests::Stream;

use crate::client::{
    applied, apply, assert_consistent, is_interrupted, journal_json, journal_path, read, undo,
    undone, FakeKernel, Fixture, Mode,
};

/// Level `n` of stream "main": id `main-<n>`, replaces the lower levels,
/// fixes CVE-2026-000<k> for every k ≤ n.
fn level(fx: &Fixture, n: u32) -> PathBuf {
    level_of(fx, "main", &format!("main-{n}"), n)
}

fn level_of(fx: &Fixture, stream: &str, id: &str, n: u32) -> PathBuf {
    let name = stream.to_owned();
    fx.package(id, |m| {
        m.stream = Some(Stream {
            replaces: (1..n).map(|k| format!("{name}-{k}")).collect(),
            name,
            level: n,
        });
        m.cves = (1..=n).map(|k| format!("CVE-2026-000{k}")).collect();
    })
}

fn phases(fx: &Fixture, sys: &dyn Sys) -> Vec<(String, Phase)> {
    let host = fx.host(sys);
    State::peek(&host)
        .expect("journal")
        .entries()
        .iter()
        .map(|e| (e.id.clone(), e.phase))
        .collect()
}

fn package_exists(fx: &Fixture, id: &str) -> bool {
    fx.state_dir()
        .join("packages")
        .join(format!("ksplice-{id}.tar.gz"))
        .exists()
}

/// At every moment the kernel ran (each checkpoint and poll), one of
/// `modules` was enabled: the fixes they share were never missing.
fn always_covered(sys: &FakeKernel, modules: &[&str]) {
    let history = sys.live_history.borrow();
    for (n, live) in history.iter().enumerate() {
        assert!(
            live.iter().any(|m| modules.contains(&m.as_str())),
            "moment {n}: none of {modules:?} enabled: {live:?}"
        );
    }
}

fn superseded(id: &str, by: &str) -> Event {
    Event::Superseded {
        id: id.into(),
        by: by.into(),
    }
}

/// Applied levels 1 then 2 of stream main.
fn at_level_2() -> Fixture {
    let fx = Fixture::new();
    let sys = FakeKernel::new(&fx.root, Mode::Normal);
    apply(&fx, &sys, &[level(&fx, 1)]).0.expect("level 1");
    apply(&fx, &sys, &[level(&fx, 2)]).0.expect("level 2");
    fx
}

#[test]
fn cumulative_level_2_replaces_level_1_in_one_transition() {
    let fx = Fixture::new();
    let sys = FakeKernel::new(&fx.root, Mode::Normal);
    let (r, events) = apply(&fx, &sys, &[level(&fx, 1)]);
    r.expect("level 1");
    assert_eq!(events, vec![applied("main-1")]);

    let sys = FakeKernel::new(&fx.root, Mode::Normal);
    let (r, events) = apply(&fx, &sys, &[level(&fx, 2)]);
    r.expect("level 2");
    assert_eq!(
        events,
        vec![applied("main-2"), superseded("main-1", "main-2")]
    );
    // One load, one transition: the kernel replaced level 1, whose module
    // the client then unloaded.
    assert_eq!(
        fx.loads(),
        vec![
            "load ksplice_main_1",
            "load ksplice_main_2",
            "replaced ksplice_main_1 by ksplice_main_2",
            "unload ksplice_main_1",
        ]
    );
    always_covered(&sys, &["ksplice_main_1", "ksplice_main_2"]);
    assert!(sys.live_history.borrow().len() > 5, "moments recorded");
    assert_eq!(
        phases(&fx, &sys),
        vec![
            ("main-1".to_owned(), Phase::Superseded),
            ("main-2".to_owned(), Phase::Applied)
        ]
    );
    assert!(package_exists(&fx, "main-1"), "kept for undo");
    assert!(!fx.root.join("sys/module/ksplice_main_1").exists());
    assert_consistent(&fx);

    let host = fx.host(&sys);
    let status = ops::status(&host).expect("status");
    assert_eq!(status.exit_code(), exit::OK, "superseded is not pending");
    assert_eq!(
        status.to_string(),
        "effective kernel 6.1.0-56-amd64+ksplice.main.2: up to date (1 applied, 1 superseded: main-1)"
    );
    let view = ops::view(&host).expect("view");
    let states: Vec<(&str, &str, &str)> = view
        .updates
        .iter()
        .map(|u| (u.id.as_str(), u.state.as_str(), u.livepatch.as_str()))
        .collect();
    assert_eq!(
        states,
        vec![
            ("main-1", "superseded", "not loaded"),
            ("main-2", "applied", "enabled")
        ]
    );
    let text = ops::ViewText(&view.updates[1]).to_string();
    assert!(
        text.contains("  stream: main level 2 (replaces main-1)\n"),
        "{text}"
    );
}

#[test]
fn cumulative_undo_steps_back_to_the_lower_level_in_one_transition() {
    let fx = at_level_2();
    let sys = FakeKernel::new(&fx.root, Mode::Normal);
    let (r, events) = undo(&fx, &sys, Targets::Ids(vec!["main-2".into()]));
    r.expect("undo level 2");
    assert_eq!(
        events,
        vec![Event::SteppedBack {
            id: "main-2".into(),
            to: "main-1".into()
        }]
    );
    assert_eq!(
        fx.loads()[4..],
        [
            "load ksplice_main_1",
            "replaced ksplice_main_2 by ksplice_main_1",
            "unload ksplice_main_2",
        ]
    );
    always_covered(&sys, &["ksplice_main_1", "ksplice_main_2"]);
    assert!(sys.live_history.borrow().len() > 5, "moments recorded");
    assert_eq!(
        phases(&fx, &sys),
        vec![("main-1".to_owned(), Phase::Applied)]
    );
    assert!(!package_exists(&fx, "main-2"));
    assert_consistent(&fx);
    let host = fx.host(&sys);
    assert_eq!(
        ops::status(&host).expect("status").effective_version(),
        "6.1.0-56-amd64+ksplice.main.1"
    );

    // Nothing below level 1: undo removes the stream with a plain disable.
    let (r, events) = undo(&fx, &sys, Targets::Ids(vec!["main-1".into()]));
    r.expect("undo level 1");
    assert_eq!(events, vec![undone("main-1")]);
    assert_eq!(
        fx.loads().last().map(String::as_str),
        Some("unload ksplice_main_1")
    );
    assert!(fs::read_dir(fx.root.join("sys/kernel/livepatch"))
        .expect("livepatch dir")
        .next()
        .is_none());
    assert!(phases(&fx, &sys).is_empty());
    assert_consistent(&fx);
}

#[test]
fn cumulative_undo_all_removes_superseded_levels_then_disables_once() {
    let fx = at_level_2();
    let sys = FakeKernel::new(&fx.root, Mode::Normal);
    let (r, events) = undo(&fx, &sys, Targets::All);
    r.expect("undo --all");
    assert_eq!(
        events,
        vec![
            Event::Removed {
                id: "main-1".into()
            },
            undone("main-2")
        ]
    );
    assert_eq!(fx.loads()[4..], ["unload ksplice_main_2"], "no step back");
    assert!(phases(&fx, &sys).is_empty());
    assert_consistent(&fx);
}

#[test]
fn cumulative_refused_while_a_stand_alone_update_is_live() {
    let fx = Fixture::new();
    let sys = FakeKernel::new(&fx.root, Mode::Normal);
    apply(&fx, &sys, &[fx.package("fix-a", |_| {})])
        .0
        .expect("stand-alone");
    let (r, events) = apply(&fx, &sys, &[level(&fx, 1)]);
    match r {
        Err(ref e @ Error::StreamBlocked { ref live, .. }) => {
            assert_eq!(
                live,
                &vec!["ksplice_fix_a (stand-alone update fix-a)".to_owned()]
            );
            assert_eq!(e.exit_code(), exit::DEPENDENCY);
            assert!(e.to_string().contains("undo them first"), "{e}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(events.is_empty());
    assert_eq!(fx.loads(), vec!["load ksplice_fix_a"], "kernel changed");
    assert_eq!(
        phases(&fx, &sys),
        vec![("fix-a".to_owned(), Phase::Applied)]
    );
    assert!(!package_exists(&fx, "main-1"));
    assert_consistent(&fx);
}

/// Stand-alone updates stack on a stream level as they always did; the next
/// level is then refused (it would drop them), and so is the step back.
#[test]
fn cumulative_stand_alone_stacks_on_a_stream_and_blocks_its_switches() {
    let fx = at_level_2();
    let sys = FakeKernel::new(&fx.root, Mode::Normal);
    let (r, events) = apply(&fx, &sys, &[fx.package("fix-a", |_| {})]);
    r.expect("stand-alone on top");
    assert_eq!(events, vec![applied("fix-a")]);
    let host = fx.host(&sys);
    assert_eq!(
        ops::status(&host).expect("status").effective_version(),
        "6.1.0-56-amd64+ksplice.main.2+fix-a"
    );
    let loads = fx.loads();

    let (r, _) = apply(&fx, &sys, &[level(&fx, 3)]);
    assert!(
        matches!(r, Err(Error::StreamBlocked { ref live, level: 3, .. })
            if live == &vec!["ksplice_fix_a (stand-alone update fix-a)".to_owned()]),
        "{r:?}"
    );
    let (r, _) = undo(&fx, &sys, Targets::Ids(vec!["main-2".into()]));
    match r {
        Err(
            ref e @ Error::StepBackBlocked {
                ref to, ref live, ..
            },
        ) => {
            assert_eq!(to, "main-1");
            assert_eq!(
                live,
                &vec!["ksplice_fix_a (stand-alone update fix-a)".to_owned()]
            );
            assert_eq!(e.exit_code(), exit::DEPENDENCY);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(fx.loads(), loads, "kernel changed");
    assert_eq!(
        phases(&fx, &sys),
        vec![
            ("main-1".to_owned(), Phase::Superseded),
            ("main-2".to_owned(), Phase::Applied),
            ("fix-a".to_owned(), Phase::Applied),
        ]
    );
    assert!(!package_exists(&fx, "main-3"));
    assert_consistent(&fx);
}

#[test]
fn cumulative_refused_while_a_foreign_livepatch_is_live() {
    let fx = Fixture::new();
    let vendor = fx.root.join("sys/kernel/livepatch/vendor_lp");
    fs::create_dir_all(&vendor).expect("vendor patch");
    fs::write(vendor.join("enabled"), "1\n").expect("enabled");
    fs::write(vendor.join("transition"), "0\n").expect("transition");
    let sys = FakeKernel::new(&fx.root, Mode::Normal);
    let (r, _) = apply(&fx, &sys, &[level(&fx, 1)]);
    assert!(
        matches!(r, Err(Error::StreamBlocked { ref live, .. })
            if live == &vec!["vendor_lp (not installed by ksplice)".to_owned()]),
        "{r:?}"
    );
    assert!(fx.loads().is_empty());
    assert!(phases(&fx, &sys).is_empty());
    assert_eq!(read(&vendor.join("enabled")), "1");

    // Another stream is foreign to this one too.
    fs::remove_dir_all(&vendor).expect("vendor gone");
    apply(&fx, &sys, &[level_of(&fx, "cve", "cve-1", 1)])
        .0
        .expect("stream cve");
    let (r, _) = apply(&fx, &sys, &[level(&fx, 1)]);
    assert!(
        matches!(r, Err(Error::StreamBlocked { ref live, .. })
            if live == &vec!["ksplice_cve_1 (update cve-1, stream cve level 1)".to_owned()]),
        "{r:?}"
    );
    assert_eq!(fx.loads(), vec!["load ksplice_cve_1"]);
    assert_consistent(&fx);
}

#[test]
fn cumulative_level_not_above_the_applied_one_is_refused() {
    let fx = at_level_2();
    let sys = FakeKernel::new(&fx.root, Mode::Normal);
    let loads = fx.loads();
    let before = phases(&fx, &sys);
    // Lower: level 1 (superseded, installed) again.
    let (r, _) = apply(&fx, &sys, &[level(&fx, 1)]);
    match r {
        Err(
            ref e @ Error::StreamLevel {
                applied: 2,
                level: 1,
                ref applied_id,
                ..
            },
        ) => {
            assert_eq!(applied_id, "main-2");
            assert_eq!(e.exit_code(), exit::DEPENDENCY);
            assert!(e.to_string().contains("already at level 2"), "{e}");
        }
        other => panic!("unexpected {other:?}"),
    }
    // Equal: another build at level 2.
    let other = level_of(&fx, "main", "main-2b", 2);
    let (r, _) = apply(&fx, &sys, &[other]);
    assert!(
        matches!(
            r,
            Err(Error::StreamLevel {
                applied: 2,
                level: 2,
                ..
            })
        ),
        "{r:?}"
    );
    // The applied one itself: nothing to do, as for any update.
    let (r, events) = apply(&fx, &sys, &[level(&fx, 2)]);
    r.expect("same id");
    assert_eq!(
        events,
        vec![Event::AlreadyApplied {
            id: "main-2".into()
        }]
    );
    assert_eq!(fx.loads(), loads);
    assert_eq!(phases(&fx, &sys), before);
    assert!(package_exists(&fx, "main-1"));
    assert!(!package_exists(&fx, "main-2b"));
    assert_consistent(&fx);
}

#[test]
fn cumulative_boot_applies_only_the_highest_installed_level() {
    let fx = at_level_2();
    let sys = FakeKernel::new(&fx.root, Mode::Normal);
    apply(&fx, &sys, &[fx.package("fix-a", |_| {})])
        .0
        .expect("stand-alone on top");
    fx.reboot();
    let boot_log = fx.loads().len();
    let host = fx.host(&sys);
    let status = ops::status(&host).expect("status after reboot");
    assert_eq!(status.pending, vec!["main-2", "fix-a"], "{status}");
    assert_eq!(status.superseded, vec!["main-1"]);
    let mut events = Vec::new();
    ops::apply_installed(&host, &mut |e| events.push(e)).expect("boot");
    assert_eq!(
        events,
        vec![
            Event::Skipped {
                id: "main-1".into(),
                reason: "superseded by main-2 (level 2 of stream main)".into()
            },
            applied("main-2"),
            applied("fix-a"),
        ]
    );
    assert_eq!(
        fx.loads()[boot_log..],
        ["load ksplice_main_2", "load ksplice_fix_a"],
        "level 1 was loaded"
    );
    assert_eq!(
        phases(&fx, &sys),
        vec![
            ("main-1".to_owned(), Phase::Superseded),
            ("main-2".to_owned(), Phase::Applied),
            ("fix-a".to_owned(), Phase::Applied),
        ]
    );
    assert_eq!(ops::status(&host).expect("status").exit_code(), exit::OK);
    assert_consistent(&fx);
}

/// A level installed but never superseded (its higher level was installed
/// later while the machine was down) is skipped at boot and superseded once
/// the higher one is applied.
#[test]
fn cumulative_boot_supersedes_lower_installed_levels() {
    let fx = Fixture::new();
    let sys = FakeKernel::new(&fx.root, Mode::Normal);
    apply(&fx, &sys, &[level(&fx, 1)]).0.expect("level 1");
    fx.reboot();
    apply(&fx, &sys, &[level(&fx, 3)])
        .0
        .expect("level 3, level 1 not live");
    assert_eq!(
        phases(&fx, &sys),
        vec![
            ("main-1".to_owned(), Phase::Superseded),
            ("main-3".to_owned(), Phase::Applied)
        ]
    );
    assert_consistent(&fx);
}

#[test]
fn cumulative_journal_stream_fields_are_validated_when_read_back() {
    let fx = at_level_2();
    let sys = FakeKernel::new(&fx.root, Mode::Normal);
    let good = journal_json(&fx);
    assert_eq!(good["format"], 3);
    assert_eq!(
        good["updates"][1]["manifest"]["stream"],
        serde_json::json!({"name": "main", "level": 2, "replaces": ["main-1"]})
    );
    assert_eq!(good["updates"][0]["phase"], "superseded");
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, Edit); 8] = [
        ("level 0", |j| {
            j["updates"][1]["manifest"]["stream"]["level"] = 0.into()
        }),
        ("stream name with /", |j| {
            j["updates"][1]["manifest"]["stream"]["name"] = "a/b".into()
        }),
        ("replaces with ..", |j| {
            j["updates"][1]["manifest"]["stream"]["replaces"] = serde_json::json!([".."])
        }),
        ("replaces itself", |j| {
            j["updates"][1]["manifest"]["stream"]["replaces"] = serde_json::json!(["main-2"])
        }),
        ("same level twice", |j| {
            j["updates"][0]["manifest"]["stream"]["level"] = 2.into()
        }),
        ("stream with builds_on", |j| {
            j["updates"][1]["manifest"]["builds_on"] = serde_json::json!(["main-1"])
        }),
        ("superseded without a stream", |j| {
            j["updates"][0]["manifest"]
                .as_object_mut()
                .expect("object")
                .remove("stream");
        }),
        ("stream in a format-2 journal", |j| j["format"] = 2.into()),
    ];
    for (what, edit) in cases {
        let mut j = good.clone();
        edit(&mut j);
        fs::write(journal_path(&fx), serde_json::to_vec(&j).expect("json")).expect("write");
        let host = fx.host(&sys);
        match ops::status(&host) {
            Err(ref e @ Error::Journal { .. }) => assert_eq!(e.exit_code(), exit::STATE, "{what}"),
            other => panic!("{what}: unexpected {other:?}"),
        }
    }
    fs::write(journal_path(&fx), serde_json::to_vec(&good).expect("json")).expect("restore");
    let host = fx.host(&sys);
    assert_eq!(
        ops::status(&host).expect("status").applied_ids(),
        ["main-2"]
    );
}

/// A format-2 journal (no streams) is read and rewritten as format 3.
#[test]
fn cumulative_format_2_journal_is_read_and_upgraded() {
    let fx = Fixture::new();
    let sys = FakeKernel::new(&fx.root, Mode::Normal);
    apply(&fx, &sys, &[fx.package("fix-a", |_| {})])
        .0
        .expect("apply");
    let mut j = journal_json(&fx);
    j["format"] = 2.into();
    fs::write(journal_path(&fx), serde_json::to_vec(&j).expect("json")).expect("v2");
    let host = fx.host(&sys);
    assert_eq!(ops::status(&host).expect("status").applied_ids(), ["fix-a"]);
    apply(&fx, &sys, &[fx.package("fix-b", |_| {})])
        .0
        .expect("apply b");
    assert_eq!(journal_json(&fx)["format"], 3);
}

/// Crash at every checkpoint of `op`; after each, `status` recovers, the
/// state is consistent, `finish` completes the job, and the fixes of level 1
/// were never missing. Returns the number of checkpoints.
fn crash_everywhere(
    setup: &dyn Fn(&Fixture),
    op: &dyn Fn(&Fixture, &FakeKernel) -> Result<(), Error>,
    finish: &dyn Fn(&Fixture, &FakeKernel),
) -> usize {
    let mut n = 0;
    loop {
        let fx = Fixture::new();
        setup(&fx);
        let crashing = FakeKernel::new(&fx.root, Mode::Normal).crashing_at(n);
        let r = op(&fx, &crashing);
        always_covered(&crashing, &["ksplice_main_1", "ksplice_main_2"]);
        if !is_interrupted(&r) {
            r.expect("runs to the end");
            return n;
        }
        let sys = FakeKernel::new(&fx.root, Mode::Normal);
        let host = fx.host(&sys);
        ops::status(&host).unwrap_or_else(|e| panic!("crash at {n}: recovery failed: {e:?}"));
        assert_consistent(&fx);
        finish(&fx, &sys);
        assert_consistent(&fx);
        always_covered(&sys, &["ksplice_main_1", "ksplice_main_2"]);
        n += 1;
    }
}

#[test]
fn cumulative_switch_recovers_from_a_crash_at_every_step() {
    let setup = |fx: &Fixture| {
        let sys = FakeKernel::new(&fx.root, Mode::Normal);
        apply(fx, &sys, &[level(fx, 1)]).0.expect("level 1");
    };
    let op = |fx: &Fixture, sys: &FakeKernel| apply(fx, sys, &[level(fx, 2)]).0;
    let finish = |fx: &Fixture, sys: &FakeKernel| {
        apply(fx, sys, &[level(fx, 2)])
            .0
            .expect("level 2 after recovery");
        assert_eq!(
            phases(fx, sys),
            vec![
                ("main-1".to_owned(), Phase::Superseded),
                ("main-2".to_owned(), Phase::Applied)
            ]
        );
        let loads = fx.loads();
        assert_eq!(
            loads.iter().filter(|l| *l == "load ksplice_main_2").count(),
            1,
            "{loads:?}"
        );
    };
    let n = crash_everywhere(&setup, &op, &finish);
    assert!(n >= 9, "only {n} checkpoints");
}

#[test]
fn cumulative_step_back_recovers_from_a_crash_at_every_step() {
    let setup = |fx: &Fixture| {
        let sys = FakeKernel::new(&fx.root, Mode::Normal);
        apply(fx, &sys, &[level(fx, 1)]).0.expect("level 1");
        apply(fx, &sys, &[level(fx, 2)]).0.expect("level 2");
    };
    let op = |fx: &Fixture, sys: &FakeKernel| undo(fx, sys, Targets::Ids(vec!["main-2".into()])).0;
    let finish = |fx: &Fixture, sys: &FakeKernel| {
        let host = fx.host(sys);
        if State::peek(&host).expect("peek").find("main-2").is_some() {
            undo(fx, sys, Targets::Ids(vec!["main-2".into()]))
                .0
                .expect("undo after recovery");
        }
        assert_eq!(phases(fx, sys), vec![("main-1".to_owned(), Phase::Applied)]);
        assert!(!fx.root.join("sys/module/ksplice_main_2").exists());
    };
    let n = crash_everywhere(&setup, &op, &finish);
    assert!(n >= 9, "only {n} checkpoints");
}

/// A stalled switch is reversed: level 1 stays applied, level 2 is dropped.
#[test]
fn cumulative_stalled_switch_keeps_the_lower_level() {
    let fx = Fixture::new();
    apply(
        &fx,
        &FakeKernel::new(&fx.root, Mode::Normal),
        &[level(&fx, 1)],
    )
    .0
    .expect("level 1");
    let sys = FakeKernel::new(&fx.root, Mode::StallEnable);
    let (r, _) = apply(&fx, &sys, &[level(&fx, 2)]);
    assert!(matches!(r, Err(Error::TransitionTimeout { .. })), "{r:?}");
    always_covered(&sys, &["ksplice_main_1"]);
    assert_eq!(
        phases(&fx, &sys),
        vec![("main-1".to_owned(), Phase::Applied)]
    );
    assert_consistent(&fx);
}

fn write_uts(fx: &Fixture) {
    fs::create_dir_all(fx.root.join("proc/sys/kernel")).expect("mkdir");
    fs::write(fx.root.join("proc/sys/kernel/ostype"), "Linux\n").expect("ostype");
    fs::write(fx.root.join("proc/sys/kernel/hostname"), "web-7\n").expect("hostname");
}

#[test]
fn cumulative_uname_shows_the_effective_version() {
    let fx = Fixture::new();
    write_uts(&fx);
    let sys = FakeKernel::new(&fx.root, Mode::Normal);
    let host = fx.host(&sys);
    let line = |field| {
        let s = ops::status(&host).expect("status");
        report::uname(&host, &s, field).expect("uname")
    };
    let v = "#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2 (2026-01-01)";
    assert_eq!(line(UnameField::Release), "6.1.0-56-amd64");
    assert_eq!(line(UnameField::Version), v);
    assert_eq!(
        line(UnameField::All),
        format!("Linux web-7 6.1.0-56-amd64 {v} x86_64 GNU/Linux")
    );
    apply(&fx, &sys, &[level(&fx, 1)]).0.expect("level 1");
    apply(&fx, &sys, &[level(&fx, 2)]).0.expect("level 2");
    apply(&fx, &sys, &[fx.package("fix-a", |_| {})])
        .0
        .expect("fix-a");
    assert_eq!(
        line(UnameField::Release),
        "6.1.0-56-amd64+ksplice.main.2+fix-a"
    );
    assert_eq!(
        line(UnameField::Version),
        format!("{v} ksplice:main.2,fix-a")
    );
    assert_eq!(
        line(UnameField::All),
        format!("Linux web-7 6.1.0-56-amd64+ksplice.main.2+fix-a {v} ksplice:main.2,fix-a x86_64 GNU/Linux")
    );
    // status's one line names the same effective version.
    let s = ops::status(&host).expect("status");
    assert!(
        s.to_string()
            .starts_with("effective kernel 6.1.0-56-amd64+ksplice.main.2+fix-a: "),
        "{s}"
    );
}

#[test]
fn cumulative_status_and_view_json_follow_format_1() {
    let fx = at_level_2();
    let sys = FakeKernel::new(&fx.root, Mode::Normal);
    apply(
        &fx,
        &sys,
        &[fx.package("fix-a", |m| m.cves = vec!["CVE-2026-0009".into()])],
    )
    .0
    .expect("fix-a");
    let host = fx.host(&sys);
    let s = ops::status(&host).expect("status");
    let j = serde_json::to_value(report::StatusJson::new(&s)).expect("json");
    let build_id = j["kernel"]["build_id"].clone();
    assert_eq!(
        j,
        serde_json::json!({
            "format": 1,
            "kernel": {
                "release": "6.1.0-56-amd64",
                "version": "#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2 (2026-01-01)",
                "arch": "x86_64",
                "build_id": build_id,
            },
            "effective": {
                "release": "6.1.0-56-amd64+ksplice.main.2+fix-a",
                "version": "#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2 (2026-01-01) ksplice:main.2,fix-a",
            },
            "status": "up-to-date",
            "exit_code": 0,
            "applied": [
                {
                    "id": "main-2",
                    "stream": {"name": "main", "level": 2},
                    "cves": ["CVE-2026-0001", "CVE-2026-0002"],
                    "applied_at": j["applied"][0]["applied_at"].clone(),
                },
                {
                    "id": "fix-a",
                    "stream": null,
                    "cves": ["CVE-2026-0009"],
                    "applied_at": j["applied"][1]["applied_at"].clone(),
                },
            ],
            "pending": [],
            "superseded": ["main-1"],
            "not_in_journal": {"livepatches": [], "packages": []},
            "cves_fixed": ["CVE-2026-0001", "CVE-2026-0002", "CVE-2026-0009"],
            "held": null,
        })
    );
    assert_eq!(build_id.as_str().map(str::len), Some(40));
    assert!(j["applied"][0]["applied_at"].is_string());

    let v = ops::view(&host).expect("view");
    let j = serde_json::to_value(report::ViewJson::new(&v)).expect("json");
    assert_eq!(j["format"], 1);
    assert_eq!(j["kernel"]["release"], "6.1.0-56-amd64");
    let ups: Vec<(String, String, serde_json::Value)> = j["updates"]
        .as_array()
        .expect("updates")
        .iter()
        .map(|u| {
            (
                u["id"].as_str().unwrap_or_default().to_owned(),
                u["state"].as_str().unwrap_or_default().to_owned(),
                u["stream"].clone(),
            )
        })
        .collect();
    assert_eq!(
        ups,
        vec![
            (
                "main-1".into(),
                "superseded".into(),
                serde_json::json!({"name": "main", "level": 1})
            ),
            (
                "main-2".into(),
                "applied".into(),
                serde_json::json!({"name": "main", "level": 2, "replaces": ["main-1"]})
            ),
            ("fix-a".into(), "applied".into(), serde_json::Value::Null),
        ]
    );
    // Superseded level 1's CVE counts through level 2, not twice.
    assert_eq!(
        j["cves_fixed"],
        serde_json::json!(["CVE-2026-0001", "CVE-2026-0002", "CVE-2026-0009"])
    );
    assert_eq!(j["not_in_journal"]["livepatches"], serde_json::json!([]));
}
