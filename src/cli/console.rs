//! `hakube console`: a one-time sign-in link to the cluster page (run on a
//! master: being root there is the credential).

use std::net::IpAddr;

use anyhow::Context as _;

use crate::console::session;
use crate::host::clock::now_secs;
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
         A session lasts {} hours; `Sign out` on the page ends it.\n",
        session::LINK_TTL.as_secs() / 60,
        code.reveal(),
        ca.display(),
        session::SESSION_TTL.as_secs() / 3600,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_on_the_masters_join_port() {
        assert_eq!(page_url("10.0.0.11".parse().unwrap(), 9443), "https://10.0.0.11:9443/console");
        assert_eq!(page_url("fd00::11".parse().unwrap(), 9443), "https://[fd00::11]:9443/console");
    }
}
