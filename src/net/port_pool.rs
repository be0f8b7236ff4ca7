//! Relay ports: a shuffled free list shared by all workers, touched only when an allocation
//! starts or ends. Taking never fails while a port is free, and a returned port goes to the back,
//! so a just-released port is the last to be handed out again (late peer packets find nobody).

use rand::seq::SliceRandom;
use std::collections::VecDeque;

#[derive(Debug)]
pub struct PortPool {
    free: VecDeque<u16>,
    size: usize,
}

impl PortPool {
    /// All ports of `min..=max`, in random order (unpredictable relay ports).
    pub fn new(min: u16, max: u16) -> Self {
        let mut ports: Vec<u16> = (min..=max).collect();
        ports.shuffle(&mut rand::thread_rng());
        PortPool {
            size: ports.len(),
            free: ports.into(),
        }
    }

    /// A free port (an even one if asked), or `None` when none is left.
    pub fn take(&mut self, even: bool) -> Option<u16> {
        if !even {
            return self.free.pop_front();
        }
        let position = self.free.iter().position(|p| p % 2 == 0)?;
        self.free.remove(position)
    }

    /// An even port whose successor is free too; both leave the pool (RTP/RTCP pairs).
    pub fn take_pair(&mut self) -> Option<(u16, u16)> {
        let position = self
            .free
            .iter()
            .position(|&p| p % 2 == 0 && p < u16::MAX && self.free.contains(&(p + 1)))?;
        let even = self.free.remove(position)?;
        let odd_position = self.free.iter().position(|&p| p == even + 1)?;
        self.free.remove(odd_position);
        Some((even, even + 1))
    }

    pub fn give_back(&mut self, port: u16) {
        self.free.push_back(port);
    }

    pub fn free(&self) -> usize {
        self.free.len()
    }

    pub fn size(&self) -> usize {
        self.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn hands_out_every_port_once_then_none() {
        let mut pool = PortPool::new(50000, 50009);
        let taken: HashSet<u16> = (0..10).map(|_| pool.take(false).unwrap()).collect();
        assert_eq!(taken, (50000..=50009).collect());
        assert_eq!(pool.take(false), None);
        assert_eq!(pool.free(), 0);
    }

    #[test]
    fn returned_port_is_reused_last() {
        let mut pool = PortPool::new(50000, 50002);
        let first = pool.take(false).unwrap();
        pool.give_back(first);
        let next_two = [pool.take(false).unwrap(), pool.take(false).unwrap()];
        assert!(!next_two.contains(&first));
        assert_eq!(pool.take(false), Some(first));
    }

    #[test]
    fn pairs_are_even_then_odd_and_leave_the_pool() {
        let mut pool = PortPool::new(50000, 50003);
        let (even, odd) = pool.take_pair().unwrap();
        assert_eq!((even % 2, odd), (0, even + 1));
        let (second, _) = pool.take_pair().unwrap();
        assert_ne!(second, even);
        assert_eq!(pool.take_pair(), None);
        assert_eq!(pool.free(), 0);
    }

    #[test]
    fn even_ports_on_request() {
        let mut pool = PortPool::new(50000, 50005);
        for _ in 0..3 {
            assert_eq!(pool.take(true).unwrap() % 2, 0);
        }
        assert_eq!(pool.take(true), None, "only odd ports are left");
        assert_eq!(pool.free(), 3);
    }
}
