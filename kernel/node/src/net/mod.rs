//! The node's network: smoltcp over the virtio card, addressed by DHCP, serving the node API.

pub mod api;

use alloc::vec;

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::socket::dhcpv4;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address};

use crate::arch::clock;
use crate::drivers::net::NetDevice;

pub struct Network {
    pub device: NetDevice,
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
    dhcp: smoltcp::iface::SocketHandle,
    pub address: Option<(IpCidr, Option<Ipv4Address>)>,
}

fn now() -> Instant {
    Instant::from_micros(clock::micros_since_boot() as i64)
}

impl Network {
    pub fn start() -> Result<Network, crate::drivers::net::NoNetwork> {
        let mut device = NetDevice::probe()?;
        let mac = EthernetAddress(device.mac());
        // The seed only spreads TCP ports and sequence numbers; the MAC is as good as any.
        let mut config = Config::new(HardwareAddress::Ethernet(mac));
        config.random_seed = u64::from_le_bytes([mac.0[0], mac.0[1], mac.0[2], mac.0[3], mac.0[4], mac.0[5], 0, 0]);
        let iface = Interface::new(config, &mut device, now());
        let mut sockets = SocketSet::new(vec![]);
        let dhcp = sockets.add(dhcpv4::Socket::new());
        Ok(Network { device, iface, sockets, dhcp, address: None })
    }

    /// Moves packets and timers along; returns true once the address is known.
    pub fn poll(&mut self) -> bool {
        self.iface.poll(now(), &mut self.device, &mut self.sockets);
        let event = self.sockets.get_mut::<dhcpv4::Socket>(self.dhcp).poll();
        match event {
            Some(dhcpv4::Event::Configured(config)) => {
                let cidr = IpCidr::Ipv4(config.address);
                self.iface.update_ip_addrs(|addrs| {
                    addrs.clear();
                    let _ = addrs.push(cidr);
                });
                if let Some(router) = config.router {
                    let _ = self.iface.routes_mut().add_default_ipv4_route(router);
                } else {
                    self.iface.routes_mut().remove_default_ipv4_route();
                }
                self.address = Some((cidr, config.router));
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
