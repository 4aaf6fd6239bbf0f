//! `hakube console`: a one-time sign-in link to the cluster page (run on a
//! master: being root there is the credential).

use std::net::IpAddr;

use anyhow::Context as _;

use crate::console::session;
use crate::host::clock::{now_secs, rfc3339};
use crate::host::paths::Paths;

/// Who asks: the user behind sudo when there is one, and this node.
fn asker(node: &str) -> String {
    let user = std::env::var("SUDO_USER").or_else(|_| std::env::var("USER")).unwrap_or_else(|_| "root".into());
    format!("{user}@{node}")
}

/// The page's address on this master.
pub fn page_url(address: IpAddr, port: u16) -> String {
    match address {
        IpAddr::V4(a) => format!("https://{a}:{port}/console"),
        IpAddr::V6(a) => format!("https://[{a}]:{port}/console"),
    }
}

/// Creates a link and says how to use it.
pub fn run(paths: &Paths) -> anyhow::Result<String> {
    let c = crate::cli::tokens::master_config(paths)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let code = rt.block_on(async {
        let (mut client, endpoint) = crate::cli::tokens::connect(paths, &c).await?;
        session::create_link(&mut client, &endpoint, &asker(c.node.name.as_str()), now_secs())
            .await
            .context("cannot store the sign-in link in etcd")
    })?;
    let page = page_url(c.node.advertise_address, c.node.join_api_port);
    let ca = paths.pki("ca.crt");
    Ok(format!(
        "Open this link in a browser within {} minutes; it signs in once:\n\n  {page}/signin?code={}\n\n\
         The page's certificate is issued by the cluster's own CA, which browsers do not know: \
         import {} into the browser, or accept the warning once you have checked that the issuer is that CA.\n\
         A session lasts {} hours; `Sign out` on the page ends it, `hakube console --end-sessions` ends every one.\n",
        session::LINK_TTL.as_secs() / 60,
        code.reveal(),
        ca.display(),
        session::SESSION_TTL.as_secs() / 3600,
    ))
}

/// `hakube console --sessions`.
pub fn sessions(paths: &Paths) -> anyhow::Result<String> {
    let c = crate::cli::tokens::master_config(paths)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let open = rt.block_on(async {
        let (mut client, endpoint) = crate::cli::tokens::connect(paths, &c).await?;
        session::list(&mut client, &endpoint).await.context("cannot read the page's sessions from etcd")
    })?;
    Ok(render_sessions(&open, now_secs()))
}

/// The sessions as a table, or a sentence when there are none.
pub fn render_sessions(open: &[session::Open], now: u64) -> String {
    if open.is_empty() {
        return "No session is open on the cluster page.\n".into();
    }
    let mut out = format!("{:<12}  {:<20}  {:<26}  {:<20}  {}\n", "SESSION", "LINK BY", "FROM", "SIGNED IN", "ENDS");
    for o in open {
        let r = &o.record;
        let ends = match now >= r.expires_at {
            true => format!("{} (ended)", rfc3339(r.expires_at)),
            false => rfc3339(r.expires_at),
        };
        out += &format!("{:<12}  {:<20}  {:<26}  {:<20}  {ends}\n", o.id, r.by, r.from, rfc3339(r.created_at));
    }
    out
}

/// `hakube console --end-sessions`.
pub fn end_sessions(paths: &Paths) -> anyhow::Result<String> {
    let c = crate::cli::tokens::master_config(paths)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (sessions, links) = rt.block_on(async {
        let (mut client, endpoint) = crate::cli::tokens::connect(paths, &c).await?;
        session::end_all(&mut client, &endpoint).await.context("cannot end the page's sessions in etcd")
    })?;
    Ok(format!(
        "Ended {sessions} session(s) and {links} unused sign-in link(s): every browser signed in to the cluster page \
         is signed out, on every master. `hakube console` prints a new link.\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_listed_by_their_hash_never_their_secret() {
        assert_eq!(render_sessions(&[], 0), "No session is open on the cluster page.\n");
        let record =
            session::SessionRecord { by: "ops@m1".into(), from: "10.0.0.9".into(), created_at: 0, expires_at: 60 };
        let open = [session::Open { id: "0123456789ab".into(), record }];
        let text = render_sessions(&open, 30);
        let row = text.lines().nth(1).unwrap();
        for part in ["0123456789ab", "ops@m1", "10.0.0.9", "1970-01-01T00:00:00Z", "1970-01-01T00:01:00Z"] {
            assert!(row.contains(part), "{part} in {row}");
        }
        assert!(render_sessions(&open, 60).contains("(ended)"));
    }

    #[test]
    fn the_page_is_on_the_masters_join_port() {
        assert_eq!(page_url("10.0.0.11".parse().unwrap(), 9443), "https://10.0.0.11:9443/console");
        assert_eq!(page_url("fd00::11".parse().unwrap(), 9443), "https://[fd00::11]:9443/console");
    }
}
