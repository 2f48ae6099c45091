//! The virtio network card as a smoltcp device (the hermit-os approach: the driver *is* the
//! `phy::Device`).

use core::marker::PhantomData;

use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant;
use virtio_drivers::device::net::{RxBuffer, VirtIONet};
use virtio_drivers::transport::pci::PciTransport;

use super::virtio::KernelHal;

const QUEUE_SIZE: usize = 64;
const BUFFER_LEN: usize = 2048;
pub const MTU: usize = 1500;

pub struct NetDevice {
    inner: VirtIONet<KernelHal, PciTransport, QUEUE_SIZE>,
    irq: Option<u8>,
}

#[derive(Debug)]
pub struct NoNetwork(pub &'static str);

impl NetDevice {
    /// Finds and starts the first virtio network card.
    pub fn probe() -> Result<NetDevice, NoNetwork> {
        use virtio_drivers::transport::pci::bus::{Command, PciRoot};
        let (mut root, df): (PciRoot<_>, _) = super::pci::find_virtio_net().ok_or(NoNetwork("no virtio network card"))?;
        root.set_command(df, Command::IO_SPACE | Command::MEMORY_SPACE | Command::BUS_MASTER);
        let transport = PciTransport::new::<KernelHal, _>(&mut root, df).map_err(|_| NoNetwork("virtio-net transport setup failed"))?;
        let mut inner = VirtIONet::new(transport, BUFFER_LEN).map_err(|_| NoNetwork("virtio-net device setup failed"))?;
        // With an interrupt line, a packet wakes the node from `hlt` at once instead of at the
        // next timer tick.
        let irq = super::pci::interrupt_line(df);
        if let Some(irq) = irq {
            inner.enable_interrupts();
            crate::arch::pic::route_device(irq);
        }
        Ok(NetDevice { inner, irq })
    }

    /// Acknowledges the card's interrupt (the line was masked when it fired) and unmasks it.
    pub fn rearm(&mut self) {
        if let Some(irq) = self.irq {
            let _ = self.inner.ack_interrupt();
            crate::arch::pic::unmask(irq);
        }
    }

    pub fn mac(&self) -> [u8; 6] {
        self.inner.mac_address()
    }
}

type Card = VirtIONet<KernelHal, PciTransport, QUEUE_SIZE>;

/// smoltcp hands out a receive and a transmit token together and uses them one after the
/// other, so both point at the card and each dereferences it only while it is consumed.
pub struct Rx<'a> {
    buffer: RxBuffer,
    device: *mut Card,
    _card: PhantomData<&'a mut Card>,
}

pub struct Tx<'a> {
    device: *mut Card,
    _card: PhantomData<&'a mut Card>,
}

impl RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let result = f(self.buffer.packet());
        // SAFETY: the card outlives the token ('a), and no other reference to it is in use
        // while a token is consumed (see Rx).
        let device = unsafe { &mut *self.device };
        // The buffer goes back to the receive queue; if that fails the queue is one buffer
        // shorter, which the driver tolerates.
        let _ = device.recycle_rx_buffer(self.buffer);
        result
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        // SAFETY: as in Rx::consume.
        let device = unsafe { &mut *self.device };
        let mut buffer = device.new_tx_buffer(len);
        let result = f(buffer.packet_mut());
        // A full queue drops the frame; TCP retransmits.
        let _ = device.send(buffer);
        result
    }
}

impl Device for NetDevice {
    type RxToken<'a> = Rx<'a>;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        if !self.inner.can_recv() {
            return None;
        }
        let buffer = self.inner.receive().ok()?;
        let device: *mut Card = &mut self.inner;
        Some((Rx { buffer, device, _card: PhantomData }, Tx { device, _card: PhantomData }))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Self::TxToken<'_>> {
        let device: *mut Card = &mut self.inner;
        self.inner.can_send().then_some(Tx { device, _card: PhantomData })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.max_transmission_unit = MTU + 14;
        caps.max_burst_size = Some(1);
        caps.medium = Medium::Ethernet;
        caps
    }
}
