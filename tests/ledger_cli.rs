//! The real `leaky-tokens control-plane ledger rebuild` against a real PostgreSQL: it rebuilds a
//! damaged balance projection from the org's stream, reports the drift it fixed, and refuses a bad
//! `--org`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::pg as common;

use std::process::Command;

use leaky_control_plane::{db, ledger, tenancy};

#[tokio::test]
async fn rebuild_fixes_and_reports_drift() -> anyhow::Result<()> {
    let url = common::fresh_db().await?;
    let pool = db::pool(&url, 2)?;
    db::migrate(&pool).await?;
    let org = tenancy::orgs::create(&pool, "test", "acme").await?.id;
    ledger::grant(&pool, org, 500, "g1", None).await?;
    ledger::consume(&pool, org, 120, "req-1").await?;
    sqlx::query("UPDATE ledger.balances SET consumed = 0, balance = 500 WHERE org_id = $1")
        .bind(org)
        .execute(&pool)
        .await?;
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_leaky-tokens"))
            .args(["control-plane", "ledger", "rebuild", "--database-url", &url])
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("org {org}: drift fixed")),
        "{stdout}"
    );
    let b = ledger::balance(&pool, org).await?;
    assert_eq!((b.consumed, b.tokens), (120, 380));
    let out = run(&["--org", &org.to_string()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("consistent at version 2 (tokens 380)"),
        "{stdout}"
    );
    let out = run(&["--org", "not-a-uuid"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--org"));
    Ok(())
}
