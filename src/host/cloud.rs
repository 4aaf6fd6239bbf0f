//! Whether this host is a public or private cloud's virtual machine, from
//! what its firmware says (DMI, under /sys/class/dmi/id): on those, an
//! address moved by gratuitous ARP is not routed to its new holder unless
//! the provider is told (a floating or secondary address, allowed address
//! pairs), so the virtual IP needs the provider's help there.

use std::path::Path;

/// The DMI fields that name a cloud.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dmi {
    pub sys_vendor: String,
    pub product_name: String,
    pub bios_vendor: String,
    pub chassis_asset_tag: String,
}

impl Dmi {
    /// Reads the fields under `dir` (/sys/class/dmi/id); a missing one is empty.
    pub fn read(dir: &Path) -> Dmi {
        let field =
            |name: &str| std::fs::read_to_string(dir.join(name)).map(|s| s.trim().to_owned()).unwrap_or_default();
        Dmi {
            sys_vendor: field("sys_vendor"),
            product_name: field("product_name"),
            bios_vendor: field("bios_vendor"),
            chassis_asset_tag: field("chassis_asset_tag"),
        }
    }
}

/// The cloud `dmi` names, and what moving an address takes there.
pub fn provider(dmi: &Dmi) -> Option<(&'static str, &'static str)> {
    let any = |s: &str| {
        [&dmi.sys_vendor, &dmi.product_name, &dmi.bios_vendor, &dmi.chassis_asset_tag]
            .iter()
            .any(|f| f.to_ascii_lowercase().contains(&s.to_ascii_lowercase()))
    };
    // Azure's VMs carry this asset tag; a plain "Microsoft Corporation"
    // vendor is also Hyper-V on premises, where ARP works.
    if dmi.chassis_asset_tag == "7783-7084-3265-9085-8269-3286-77" {
        return Some(("Azure", "a load balancer or a secondary IP configuration moved through Azure's API"));
    }
    CLOUDS.iter().find(|(needle, _, _)| any(needle)).map(|(_, name, how)| (*name, *how))
}

/// (what a DMI field contains, the cloud, what moving an address takes there).
const CLOUDS: [(&str, &str, &str); 7] = [
    ("Amazon EC2", "AWS", "a secondary private address moved through EC2's API, or an NLB"),
    ("Google", "Google Cloud", "an alias IP range moved through Compute Engine's API, or a load balancer"),
    ("OpenStack", "OpenStack", "the address in each master port's allowed_address_pairs"),
    ("OracleCloud", "Oracle Cloud", "a secondary private IP moved through OCI's API"),
    ("Alibaba Cloud", "Alibaba Cloud", "HaVip (high-availability virtual IP)"),
    ("DigitalOcean", "DigitalOcean", "a reserved IP assigned through DigitalOcean's API"),
    ("Hetzner", "Hetzner Cloud", "a floating IP assigned through Hetzner's API"),
];

/// This host's cloud, if its firmware names one.
pub fn this_host() -> Option<(&'static str, &'static str)> {
    provider(&Dmi::read(Path::new("/sys/class/dmi/id")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dmi(sys_vendor: &str, product_name: &str, bios_vendor: &str, tag: &str) -> Dmi {
        Dmi {
            sys_vendor: sys_vendor.into(),
            product_name: product_name.into(),
            bios_vendor: bios_vendor.into(),
            chassis_asset_tag: tag.into(),
        }
    }

    #[test]
    fn clouds_are_named_from_their_firmware_and_bare_metal_or_local_vms_are_not() {
        let name = |d: Dmi| provider(&d).map(|(n, _)| n);
        assert_eq!(name(dmi("Amazon EC2", "m5.large", "Amazon EC2", "")), Some("AWS"));
        assert_eq!(name(dmi("Xen", "HVM domU", "Amazon EC2", "")), Some("AWS"));
        assert_eq!(name(dmi("Google", "Google Compute Engine", "Google", "")), Some("Google Cloud"));
        assert_eq!(
            name(dmi(
                "Microsoft Corporation",
                "Virtual Machine",
                "Microsoft Corporation",
                "7783-7084-3265-9085-8269-3286-77"
            )),
            Some("Azure")
        );
        assert_eq!(name(dmi("OpenStack Foundation", "OpenStack Nova", "SeaBIOS", "")), Some("OpenStack"));
        assert_eq!(name(dmi("Hetzner", "vServer", "Hetzner", "")), Some("Hetzner Cloud"));
        // Hyper-V on premises, qemu, a real server: ARP moves the address.
        assert_eq!(name(dmi("Microsoft Corporation", "Virtual Machine", "Microsoft Corporation", "")), None);
        assert_eq!(name(dmi("QEMU", "Standard PC (Q35 + ICH9, 2009)", "SeaBIOS", "")), None);
        assert_eq!(name(dmi("Dell Inc.", "PowerEdge R650", "Dell Inc.", "")), None);
        assert_eq!(name(Dmi::default()), None);
    }
}
