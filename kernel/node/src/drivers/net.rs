//! The virtio network card as a smoltcp device (the hermit-os approach: the driver *is* the
//! `phy::Device`).
//!
//! Transmission does not wait for the card: frames go on the queue and their buffers are
//! reclaimed when the card has used them. (`virtio-drivers`' high-level `send` waits for each
//! frame; under emulation that cost about 100 us per frame, one per ACK on an upload.)

use alloc::boxed::Box;
use core::marker::PhantomData;

use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant;
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::pci::PciTransport;

use super::virtio::KernelHal;

const QUEUE_SIZE: usize = 64;
const BUFFER_LEN: usize = 2048;
pub const MTU: usize = 1500;

type Card = VirtIONetRaw<KernelHal, PciTransport, QUEUE_SIZE>;
type Buffer = Box<[u8; BUFFER_LEN]>;

pub struct NetDevice {
    card: Card,
    irq: Option<u8>,
    /// Receive buffers lent to the card, by token.
    rx: [Option<Buffer>; QUEUE_SIZE],
    /// Frames on the transmit queue, by token: the buffer and the length given to the card.
    tx: [Option<(Buffer, usize)>; QUEUE_SIZE],
    /// Buffers to reuse for transmission.
    spare: alloc::vec::Vec<Buffer>,
}

#[derive(Debug)]
pub struct NoNetwork(pub &'static str);

fn buffer() -> Buffer {
    Box::new([0; BUFFER_LEN])
}

impl NetDevice {
    /// Finds and starts the `nth` virtio network card.
    pub fn probe(nth: usize) -> Result<NetDevice, NoNetwork> {
        use virtio_drivers::transport::pci::bus::{Command, PciRoot};
        let (mut root, df): (PciRoot<_>, _) =
            super::pci::find_virtio_net(nth).ok_or(NoNetwork("no virtio network card"))?;
        root.set_command(df, Command::IO_SPACE | Command::MEMORY_SPACE | Command::BUS_MASTER);
        let transport = PciTransport::new::<KernelHal, _>(&mut root, df)
            .map_err(|_| NoNetwork("virtio-net transport setup failed"))?;
        let card = Card::new(transport).map_err(|_| NoNetwork("virtio-net device setup failed"))?;
        let mut device = NetDevice {
            card,
            irq: None,
            rx: [const { None }; QUEUE_SIZE],
            tx: [const { None }; QUEUE_SIZE],
            spare: alloc::vec::Vec::new(),
        };
        for _ in 0..QUEUE_SIZE {
            device.lend_rx(buffer()).map_err(|_| NoNetwork("virtio-net receive queue setup failed"))?;
        }
        // With an interrupt line, a packet wakes the node from `hlt` at once instead of at the
        // next timer tick.
        device.irq = super::pci::interrupt_line(df);
        if let Some(irq) = device.irq {
            device.card.enable_interrupts();
            crate::arch::pic::route_device(irq);
        }
        Ok(device)
    }

    fn lend_rx(&mut self, mut buffer: Buffer) -> Result<(), virtio_drivers::Error> {
        // SAFETY: the buffer is kept in `self.rx` (a heap allocation that does not move) and not
        // touched until the card returns it through poll_receive.
        let token = unsafe { self.card.receive_begin(&mut buffer[..])? };
        self.rx[token as usize] = Some(buffer);
        Ok(())
    }

    /// Takes back transmit buffers the card has finished with.
    fn reclaim_tx(&mut self) {
        while let Some(token) = self.card.poll_transmit() {
            let Some((buffer, len)) = self.tx[token as usize].take() else { break };
            // SAFETY: the same buffer and length that were given to transmit_begin.
            let _ = unsafe { self.card.transmit_complete(token, &buffer[..len]) };
            self.spare.push(buffer);
        }
    }

    pub fn mac(&self) -> [u8; 6] {
        self.card.mac_address()
    }

    /// Acknowledges the card's interrupt (the line was masked when it fired) and unmasks it.
    pub fn rearm(&mut self) {
        if let Some(irq) = self.irq {
            let _ = self.card.ack_interrupt();
            crate::arch::pic::unmask(irq);
        }
    }
}

/// smoltcp hands out a receive and a transmit token together and uses them one after the
/// other, so both point at the device and each dereferences it only while it is consumed.
pub struct Rx<'a> {
    token: u16,
    device: *mut NetDevice,
    _device: PhantomData<&'a mut NetDevice>,
}

pub struct Tx<'a> {
    device: *mut NetDevice,
    _device: PhantomData<&'a mut NetDevice>,
}

impl RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        // SAFETY: the device outlives the token ('a), and no other reference to it is in use
        // while a token is consumed (see Rx).
        let device = unsafe { &mut *self.device };
        let mut buffer = device.rx[self.token as usize].take().expect("the card returned a lent buffer");
        // SAFETY: the buffer lent with this token, now used by the card.
        let frame = unsafe { device.card.receive_complete(self.token, &mut buffer[..]) };
        let result = match frame {
            Ok((header, len)) => f(&buffer[header..header + len]),
            Err(_) => f(&[]),
        };
        // Lend the buffer again; if that fails the queue is one buffer shorter.
        let _ = device.lend_rx(buffer);
        result
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        // SAFETY: as in Rx::consume.
        let device = unsafe { &mut *self.device };
        let mut buffer = device.spare.pop().unwrap_or_else(buffer);
        let header = device.card.fill_buffer_header(&mut buffer[..]).unwrap_or(0);
        let len = len.min(BUFFER_LEN - header);
        let result = f(&mut buffer[header..header + len]);
        // SAFETY: the buffer is kept in `device.tx` until the card is done with it.
        match unsafe { device.card.transmit_begin(&buffer[..header + len]) } {
            Ok(token) => device.tx[token as usize] = Some((buffer, header + len)),
            // A full queue drops the frame; TCP retransmits.
            Err(_) => device.spare.push(buffer),
        }
        result
    }
}

impl Device for NetDevice {
    type RxToken<'a> = Rx<'a>;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        self.reclaim_tx();
        let token = self.card.poll_receive()?;
        let device: *mut NetDevice = self;
        Some((Rx { token, device, _device: PhantomData }, Tx { device, _device: PhantomData }))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Self::TxToken<'_>> {
        self.reclaim_tx();
        let device: *mut NetDevice = self;
        self.card.can_send().then_some(Tx { device, _device: PhantomData })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.max_transmission_unit = MTU + 14;
        caps.max_burst_size = Some(QUEUE_SIZE / 2);
        caps.medium = Medium::Ethernet;
        caps
    }
}
