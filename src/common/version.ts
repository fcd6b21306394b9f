// The product version, shown by --version of every command.
export const VERSION = '0.1.0';
