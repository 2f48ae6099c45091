//! The install routine's decisions: given what is installed and what apt offers, which command
//! runs. The cases are the machines Cairn meets, the first one being issue [0/6]'s fresh machine.

use cairn_hostsetup::apt::{parse_apt_policy, parse_dpkg_query};
use cairn_hostsetup::plan::{Facts, Missing, PackageState, PlanError, decide, shell_quote};

const BOOKWORM: &str = "1:7.2+dfsg-7+deb12u18+b3";
const SECURITY: &str = "1:7.2+dfsg-7+deb12u15";
const BACKPORT: &str = "1:10.0.2+ds-2+deb13u1~bpo12+1";

const ALL: Missing = Missing { qemu_system: true, qemu_utils: true, ovmf: true };

fn offered(versions: &[&str]) -> PackageState {
    PackageState {
        installed: None,
        candidate: versions.first().map(|v| v.to_string()),
        offered: versions.iter().map(|v| v.to_string()).collect(),
    }
}

/// Bookworm's sources with the security archive, nothing installed.
fn bookworm() -> Facts {
    let mut facts = Facts::new();
    for p in ["qemu-system-x86", "qemu-utils", "qemu-system-common", "qemu-block-extra", "qemu-system-gui"] {
        facts.insert(p.into(), offered(&[BOOKWORM, SECURITY]));
    }
    facts.insert("ovmf".into(), offered(&["2022.11-6+deb12u2"]));
    facts
}

fn install(facts: &mut Facts, package: &str, version: &str) {
    let state = facts.entry(package.into()).or_default();
    state.installed = Some(version.into());
}

fn command(missing: Missing, facts: &Facts) -> String {
    decide(missing, facts).expect("a plan").expect("something to do").shell_command(false)
}

#[test]
fn fresh_machine_with_backported_qemu_utils_pins_everything_to_bookworms_qemu() {
    // Issue [0/6]: qemu-utils 10.0 from backports, no backports source, so the sources offer
    // qemu-system-x86 only at 7.2; qemu-img is there, QEMU and OVMF are not.
    let mut facts = bookworm();
    install(&mut facts, "qemu-utils", BACKPORT);
    facts.get_mut("qemu-utils").unwrap().candidate = Some(BACKPORT.into());
    let missing = Missing { qemu_system: true, qemu_utils: false, ovmf: true };
    let plan = decide(missing, &facts).unwrap().unwrap();
    assert_eq!(plan.qemu_version.as_deref(), Some(BOOKWORM));
    assert_eq!(
        plan.shell_command(false),
        format!(
            "apt-get update && apt-get install -y -qq --no-install-recommends --allow-downgrades \
             qemu-system-x86={BOOKWORM} qemu-utils={BOOKWORM} ovmf"
        )
    );
    assert_eq!(
        plan.replacing_line().unwrap(),
        format!(
            "replacing qemu-utils {BACKPORT} with {BOOKWORM} so that every QEMU package comes from one version"
        )
    );
}

#[test]
fn installed_qemu_utils_version_is_kept_when_the_sources_offer_qemu_at_it() {
    // Backports configured: qemu-system-x86 10.0 is offered too, so nothing is downgraded.
    let mut facts = bookworm();
    for p in ["qemu-system-x86", "qemu-utils", "qemu-system-common"] {
        facts.get_mut(p).unwrap().offered.push(BACKPORT.into());
    }
    install(&mut facts, "qemu-utils", BACKPORT);
    let missing = Missing { qemu_system: true, qemu_utils: false, ovmf: false };
    let plan = decide(missing, &facts).unwrap().unwrap();
    assert_eq!(plan.replacing, vec![]);
    assert_eq!(
        plan.shell_command(true),
        format!(
            "sudo apt-get update && sudo apt-get install -y -qq --no-install-recommends \
             'qemu-system-x86={BACKPORT}'"
        )
    );
}

#[test]
fn nothing_installed_takes_the_candidate_for_every_qemu_package() {
    assert_eq!(
        command(ALL, &bookworm()),
        format!(
            "apt-get update && apt-get install -y -qq --no-install-recommends \
             qemu-system-x86={BOOKWORM} qemu-utils={BOOKWORM} ovmf"
        )
    );
}

#[test]
fn only_ovmf_missing_leaves_qemu_alone() {
    let mut facts = bookworm();
    install(&mut facts, "qemu-system-x86", SECURITY);
    install(&mut facts, "qemu-utils", BACKPORT);
    let missing = Missing { qemu_system: false, qemu_utils: false, ovmf: true };
    assert_eq!(
        command(missing, &facts),
        "apt-get update && apt-get install -y -qq --no-install-recommends ovmf"
    );
}

#[test]
fn missing_qemu_img_follows_the_installed_qemu_system() {
    let mut facts = bookworm();
    install(&mut facts, "qemu-system-x86", SECURITY);
    install(&mut facts, "qemu-system-common", SECURITY);
    let missing = Missing { qemu_system: false, qemu_utils: true, ovmf: false };
    assert_eq!(
        command(missing, &facts),
        format!("apt-get update && apt-get install -y -qq --no-install-recommends qemu-utils={SECURITY}")
    );
}

#[test]
fn every_mismatched_qemu_package_is_replaced_along_with_the_rest() {
    let mut facts = bookworm();
    install(&mut facts, "qemu-utils", BACKPORT);
    install(&mut facts, "qemu-block-extra", BACKPORT);
    let plan = decide(ALL, &facts).unwrap().unwrap();
    let replaced: Vec<&str> = plan.replacing.iter().map(|r| r.package.as_str()).collect();
    assert_eq!(replaced, ["qemu-utils", "qemu-block-extra"]);
    assert!(plan.apt_args().contains(&format!("qemu-block-extra={BOOKWORM}")));
    assert!(plan.apt_args().contains(&"--allow-downgrades".to_string()));
}

#[test]
fn empty_package_lists_say_so() {
    let facts = Facts::new();
    assert_eq!(decide(ALL, &facts), Err(PlanError::NotOffered("qemu-system-x86".into())));
    let mut facts = bookworm();
    facts.remove("ovmf");
    let missing = Missing { qemu_system: false, qemu_utils: false, ovmf: true };
    let err = decide(missing, &facts).unwrap_err();
    assert!(err.to_string().contains("offer no ovmf"), "{err}");
}

#[test]
fn a_qemu_utils_missing_at_the_chosen_version_is_named() {
    let mut facts = bookworm();
    facts.get_mut("qemu-utils").unwrap().offered = vec![SECURITY.into()];
    let err = decide(ALL, &facts).unwrap_err().to_string();
    assert!(err.contains("qemu-utils is offered at 1:7.2+dfsg-7+deb12u15 only"), "{err}");
}

#[test]
fn an_installed_qemu_package_the_sources_cannot_match_is_named() {
    let mut facts = bookworm();
    install(&mut facts, "qemu-utils", BACKPORT);
    install(&mut facts, "qemu-system-gui", BACKPORT);
    facts.get_mut("qemu-system-gui").unwrap().offered.clear();
    let err = decide(ALL, &facts).unwrap_err().to_string();
    assert!(err.contains("qemu-system-gui 1:10.0.2+ds-2+deb13u1~bpo12+1 is installed"), "{err}");
}

#[test]
fn nothing_missing_means_nothing_to_do() {
    assert_eq!(decide(Missing::default(), &Facts::new()), Ok(None));
}

#[test]
fn shell_quoting_keeps_tildes_and_odd_words_intact() {
    assert_eq!(shell_quote("qemu-utils=1:7.2+dfsg-7"), "qemu-utils=1:7.2+dfsg-7");
    assert_eq!(shell_quote("a~b"), "'a~b'");
    assert_eq!(shell_quote("it's"), r"'it'\''s'");
    assert_eq!(shell_quote(""), "''");
}

/// `apt-cache policy qemu-system-x86 qemu-utils ovmf` on the fresh machine of issue [0/6].
const POLICY: &str = "\
qemu-system-x86:
  Installed: (none)
  Candidate: 1:7.2+dfsg-7+deb12u18+b3
  Version table:
     1:7.2+dfsg-7+deb12u18+b3 500
        500 http://deb.debian.org/debian bookworm/main amd64 Packages
     1:7.2+dfsg-7+deb12u15 500
        500 http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
qemu-utils:
  Installed: 1:10.0.2+ds-2+deb13u1~bpo12+1
  Candidate: 1:10.0.2+ds-2+deb13u1~bpo12+1
  Version table:
 *** 1:10.0.2+ds-2+deb13u1~bpo12+1 100
        100 /var/lib/dpkg/status
     1:7.2+dfsg-7+deb12u18+b3 500
        500 http://deb.debian.org/debian bookworm/main amd64 Packages
     1:7.2+dfsg-7+deb12u15 500
        500 http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
ovmf:
  Installed: (none)
  Candidate: (none)
  Version table:
";

#[test]
fn apt_policy_gives_candidates_and_what_the_sources_offer() {
    let parsed = parse_apt_policy(POLICY);
    let names: Vec<&str> = parsed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["qemu-system-x86", "qemu-utils", "ovmf"]);
    let utils = &parsed[1].1;
    assert_eq!(utils.installed.as_deref(), Some(BACKPORT));
    assert_eq!(utils.candidate.as_deref(), Some(BACKPORT));
    // dpkg's own record of the installed version is not a source.
    assert_eq!(utils.offered, [BOOKWORM, SECURITY]);
    assert_eq!(parsed[0].1.candidate.as_deref(), Some(BOOKWORM));
    assert_eq!(parsed[2].1, PackageState::default());
}

#[test]
fn policy_and_dpkg_together_reproduce_the_fresh_machine_plan() {
    let mut facts: Facts = parse_apt_policy(POLICY).into_iter().collect();
    facts.get_mut("ovmf").unwrap().candidate = Some("2022.11-6+deb12u2".into());
    for state in facts.values_mut() {
        state.installed = None;
    }
    let dpkg = format!("qemu-utils\tii \t{BACKPORT}\nqemu-system-x86\tun \t\novmf\trc \t2022.11\n");
    for (name, version) in parse_dpkg_query(&dpkg) {
        facts.get_mut(&name).unwrap().installed = Some(version);
    }
    assert_eq!(facts["ovmf"].installed, None, "config files only is not installed");
    let missing = Missing { qemu_system: true, qemu_utils: false, ovmf: true };
    assert!(
        command(missing, &facts)
            .ends_with(&format!("--allow-downgrades qemu-system-x86={BOOKWORM} qemu-utils={BOOKWORM} ovmf"))
    );
}
