//! The node's network: smoltcp over the virtio card, addressed by DHCP, serving the node API.

pub mod ahead;
pub mod api;
pub mod busy;
pub mod client;
pub mod connections;
pub mod coordinate;
pub mod evaluations;
pub mod jobs;
pub mod link;
pub mod metadata;
pub mod neighbors;
pub mod peer;
pub mod store_admin;

use alloc::vec;
use alloc::vec::Vec;

use cairn_channel::PublicKey;

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::socket::dhcpv4;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address};

use crate::arch::clock;
use crate::drivers::net::NetDevice;

/// The node's keys (docs/SECURITY.md, "Keys and roles"), set once before the API serves.
pub struct Keys {
    /// Its own key and the keys it serves, for every connection's channel.
    pub guard: cairn_proto::secure::NodeKeys,
    /// Its peers' cluster addresses and keys, for the connections it opens to them.
    pub peers: Vec<([u8; 4], PublicKey)>,
}

static KEYS: spin::Once<Keys> = spin::Once::new();

pub fn set_keys(keys: cairn_bootcfg::NodeKeys) {
    let guard = cairn_proto::secure::NodeKeys { ring: keys.ring(), secret: keys.secret.clone() };
    KEYS.call_once(|| Keys { guard, peers: keys.peers });
}

/// The node's keys. The API starts only after [`set_keys`].
pub fn keys() -> &'static Keys {
    KEYS.get().expect("the API serves only once the node has its keys")
}

pub struct Network {
    pub device: NetDevice,
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
    /// None with a static address.
    dhcp: Option<smoltcp::iface::SocketHandle>,
    pub address: Option<(IpCidr, Option<Ipv4Address>)>,
}

fn now() -> Instant {
    Instant::from_micros(clock::micros_since_boot() as i64)
}

impl Network {
    /// Starts the `nth` network card, with a static address or DHCP.
    pub fn start(
        nth: usize,
        static_ip: Option<cairn_bootcfg::StaticIp>,
    ) -> Result<Network, crate::drivers::net::NoNetwork> {
        let mut device = NetDevice::probe(nth)?;
        let mac = EthernetAddress(device.mac());
        // The seed spreads TCP ports and initial sequence numbers: from the entropy pool where
        // the node has one (serving), else the MAC.
        let mut config = Config::new(HardwareAddress::Ethernet(mac));
        config.random_seed = match crate::entropy::seed() {
            Some(seed) => u64::from_le_bytes(seed[..8].try_into().expect("8 bytes")),
            None => u64::from_le_bytes([mac.0[0], mac.0[1], mac.0[2], mac.0[3], mac.0[4], mac.0[5], 0, 0]),
        };
        let iface = Interface::new(config, &mut device, now());
        let mut sockets = SocketSet::new(vec![]);
        let mut network =
            Network { device, iface, sockets: SocketSet::new(vec![]), dhcp: None, address: None };
        match static_ip {
            None => network.dhcp = Some(sockets.add(dhcpv4::Socket::new())),
            Some(ip) => {
                let [a, b, c, d] = ip.address;
                let cidr = IpCidr::new(smoltcp::wire::IpAddress::v4(a, b, c, d), ip.prefix);
                let gateway = ip.gateway.map(|[a, b, c, d]| Ipv4Address::new(a, b, c, d));
                network.configure(cidr, gateway);
            }
        }
        network.sockets = sockets;
        Ok(network)
    }

    fn configure(&mut self, cidr: IpCidr, gateway: Option<Ipv4Address>) {
        self.iface.update_ip_addrs(|addrs| {
            addrs.clear();
            let _ = addrs.push(cidr);
        });
        match gateway {
            Some(router) => {
                let _ = self.iface.routes_mut().add_default_ipv4_route(router);
            }
            None => {
                self.iface.routes_mut().remove_default_ipv4_route();
            }
        }
        self.address = Some((cidr, gateway));
    }

    /// Moves packets and timers along; returns true once the address is known.
    pub fn uses_dhcp(&self) -> bool {
        self.dhcp.is_some()
    }

    pub fn poll(&mut self) -> bool {
        self.iface.poll(now(), &mut self.device, &mut self.sockets);
        let Some(dhcp) = self.dhcp else { return self.address.is_some() };
        let event = self.sockets.get_mut::<dhcpv4::Socket>(dhcp).poll();
        match event {
            Some(dhcpv4::Event::Configured(config)) => {
                let (cidr, router) = (IpCidr::Ipv4(config.address), config.router);
                self.configure(cidr, router);
            }
            Some(dhcpv4::Event::Deconfigured) => {
                self.iface.update_ip_addrs(|addrs| addrs.clear());
                self.iface.routes_mut().remove_default_ipv4_route();
                self.address = None;
            }
            None => {}
        }
        self.address.is_some()
    }
}
