// PLACEHOLDER: replaced by the real sd_notify implementation (NOTIFY_SOCKET datagram).
export async function notifySystemd(_state: string): Promise<boolean> {
  return false;
}
